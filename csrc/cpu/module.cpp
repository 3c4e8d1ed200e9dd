// Python entry point of one CPU ISA module (janus_kernels._cpu_<level>): importing it loads
// the library and with it the op registrations of its namespace(s). Python imports a module
// only when the CPU reports its ISA (janus_kernels/cpu_isa.py): loading it anywhere else could
// run instructions the CPU lacks, even in static initialisers.
#include <Python.h>

#define JANUS_PASTE_(a, b) a##b
#define JANUS_PASTE(a, b) JANUS_PASTE_(a, b)
#define JANUS_STR_(a) #a
#define JANUS_STR(a) JANUS_STR_(a)

static PyModuleDef janus_isa_module = {PyModuleDef_HEAD_INIT, JANUS_STR(TORCH_EXTENSION_NAME),
                                       nullptr, -1, nullptr};
PyMODINIT_FUNC JANUS_PASTE(PyInit_, TORCH_EXTENSION_NAME)(void) {
  return PyModule_Create(&janus_isa_module);
}
