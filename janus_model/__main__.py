"""``python -m janus_model {train,generate,evaluate,average,compare} ...``"""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
