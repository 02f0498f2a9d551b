// nonccl/nccl.h: what tpla.cu uses of NCCL, for a build without NCCL (the Makefile puts this folder on
// nvcc's include path when it finds nvcc but no NCCL). NCCL is not part of the CUDA Toolkit. One GPU
// needs no collective, so the engine runs as it is; asking for more fails at the first NCCL call with
// the message below (and ./run refuses -K 2 and up before any work).
#ifndef TPLA_NONCCL_H
#define TPLA_NONCCL_H
#include <cuda_runtime.h>

typedef struct ncclComm *ncclComm_t;
typedef struct ncclConfig ncclConfig_t;
typedef enum { ncclSuccess = 0, ncclInvalidUsage = 5 } ncclResult_t;
typedef enum { ncclFloat = 7, ncclBfloat16 = 9 } ncclDataType_t;
typedef enum { ncclSum = 0 } ncclRedOp_t;

static inline const char *ncclGetErrorString(ncclResult_t r) {
    (void)r;
    return "this build has no NCCL, so the GPU engine runs on one GPU; install NCCL (or set NCCL_HOME) and run make again";
}
static inline ncclResult_t ncclCommInitAll(ncclComm_t *c, int n, const int *devs) { (void)c; (void)n; (void)devs; return ncclInvalidUsage; }
static inline ncclResult_t ncclCommSplit(ncclComm_t c, int color, int key, ncclComm_t *out, ncclConfig_t *cfg) {
    (void)c; (void)color; (void)key; (void)out; (void)cfg; return ncclInvalidUsage;
}
static inline ncclResult_t ncclCommDestroy(ncclComm_t c) { (void)c; return ncclInvalidUsage; }
static inline ncclResult_t ncclAllReduce(const void *x, void *y, size_t n, ncclDataType_t t, ncclRedOp_t op, ncclComm_t c, cudaStream_t s) {
    (void)x; (void)y; (void)n; (void)t; (void)op; (void)c; (void)s; return ncclInvalidUsage;
}
static inline ncclResult_t ncclReduceScatter(const void *x, void *y, size_t n, ncclDataType_t t, ncclRedOp_t op, ncclComm_t c, cudaStream_t s) {
    (void)x; (void)y; (void)n; (void)t; (void)op; (void)c; (void)s; return ncclInvalidUsage;
}
static inline ncclResult_t ncclAllGather(const void *x, void *y, size_t n, ncclDataType_t t, ncclComm_t c, cudaStream_t s) {
    (void)x; (void)y; (void)n; (void)t; (void)c; (void)s; return ncclInvalidUsage;
}
#endif
