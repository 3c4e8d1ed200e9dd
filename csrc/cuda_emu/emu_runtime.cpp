// The few CUDA runtime entry points the .cu launchers call, for the emulation build (there is
// no libcudart in it), plus extern "C" controls for the Python tests (ctypes).
// Compiled once into the emulation library next to the .cu files.
#include "cuda_emu.h"

extern "C" {

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = emu::tl_last_error;
  emu::tl_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError(void) { return emu::tl_last_error; }

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    default: return "emulated CUDA error";
  }
}

cudaError_t cudaFuncSetAttribute(const void* func, enum cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || (size_t)value > emu::kMaxDynSmem) return cudaErrorInvalidValue;
    emu::set_max_dyn_smem(func, (size_t)value);
  }
  return cudaSuccess;
}

// ---- test controls
// Message of the calling thread's last failed launch ("" if none).
const char* janus_emu_last_message(void) { return emu::tl_last_message.c_str(); }
// Thread order (0 forward, 1 reverse, 2 random; -1: EMU_ORDER), workers (-1: EMU_WORKERS),
// random-order seed (0: EMU_SEED), cp.async timing (0 at wait, 1 at issue; -1: EMU_CP_ASYNC).
void janus_emu_configure(int order, int workers, unsigned seed, int cp_eager) {
  emu::config().order = order;
  emu::config().workers = workers;
  emu::config().seed = seed;
  emu::config().cp_eager = cp_eager;
}

// Block hand-out order (0 ascending, 1 descending; -1: EMU_BLOCK_ORDER).
void janus_emu_set_block_order(int order) { emu::config().block_order = order; }

}  // extern "C"
