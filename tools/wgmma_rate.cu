// tools/wgmma_rate.cu: how fast do the decode kernel's products run on the tensor cores alone? (README
// "Measured": what limits HEADS.) Every SM runs one block of W warpgroups; each
// warpgroup issues the same group of wgmmas (the kernel's own helpers, cuda/attention.cuh) ITER times,
// committed and waited as a group, with no memory traffic and no softmax. Prints cycles per group per SM
// (the W warpgroups' groups share the SM's tensor cores) and the flop rate against 4096 flop/clock/SM
// (dense bf16: an H100's or H200's 989 TFLOP/s over 132 SMs at 1.83 GHz).
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Inonccl tools/wgmma_rate.cu -o /tmp/wgmma_rate && /tmp/wgmma_rate
#include <cuda_runtime.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <algorithm>
#include <vector>
#include "../tpla.h"
typedef __nv_bfloat16 bf16;
#include "../cuda/attention.cuh"

#define ITER 256
// groups: 0 S of HEADS at 256 + 64 (16 SS m64n64k16 with Q from shared memory, 4 RS for the rope key);
// 1 the same 20 steps all RS (Q in registers); 2 P V of HEADS (4 RS m64n256k16); 3 a whole HEADS tile
// (groups 0 and 2); 4 S of the seesaw kernel (32 SS + 4 RS, 576 columns); 5 its P V (4 SS m64n256k16)
template <int group> __global__ void __launch_bounds__(256, 1) rate(float *out, long long *cycles) {
    extern __shared__ __align__(1024) char smem[];
    bf16 *Qs = (bf16 *)smem, *Ks = Qs + 64 * 576;                  // Q (64 x 576) and a tile (64 x 576), swizzled
    for (int k = threadIdx.x; k < 2 * 64 * 576; k += blockDim.x) Qs[k] = __float2bfloat16((k % 7) * 0.01f);
    fence_async();
    __syncthreads();
    const uint64_t dq = wg_desc(Qs, 16), dk = wg_desc(Ks, 16), dv = wg_desc(Ks, TC * 128);
    constexpr int nq = group == 4 ? 32 : 16;                           // S's steps with Q from shared memory
    uint32_t a[4] = {0x3c003c00u, 0x3c003c00u, 0x3c003c00u, 0x3c003c00u};
    float s[32], o[128];
    for (int k = 0; k < 32; k++) s[k] = 0;
    for (int k = 0; k < 128; k++) o[k] = 0;
    long long t0 = clock64();
    for (int it = 0; it < ITER; it++) {
        keep<32>(s); keep<128>(o);
        wgmma_fence();
        if (group == 0 || group == 3 || group == 4) {
            #pragma unroll
            for (int k = 0; k < nq; k++) wgmma_ss(s, dq + (k >> 2) * 64 * 8 + (k & 3) * 2, dk + (k >> 2) * TC * 8 + (k & 3) * 2, 1);
            #pragma unroll
            for (int k = 0; k < 4; k++) wgmma_rs(s, a, dk + 4 * TC * 8 + k * 2, 1);
        }
        if (group == 1)
            #pragma unroll
            for (int k = 0; k < 20; k++) wgmma_rs(s, a, dk + (k >> 2) * TC * 8 + (k & 3) * 2, 1);
        if (group == 2 || group == 3)
            #pragma unroll
            for (int k = 0; k < 4; k++) wgmma_pv<4>(o, a, dv + k * 128);
        if (group == 5)
            #pragma unroll
            for (int k = 0; k < 4; k++) wgmma_pv_ss(o, dq + k * 2, dv + k * 128);
        wgmma_commit();
        wgmma_wait();
    }
    keep<32>(s); keep<128>(o);
    long long t1 = clock64();
    float x = 0;
    for (int k = 0; k < 32; k++) x += s[k];
    for (int k = 0; k < 128; k++) x += o[k];
    if (x == 12345.0f) out[0] = x;                                 // keeps the products
    if (threadIdx.x == 0) cycles[blockIdx.x] = t1 - t0;
}

int main(void) {
    int sms;
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    const size_t smem = 2 * 64 * 576 * 2;
    void (*kern[6])(float *, long long *) = {rate<0>, rate<1>, rate<2>, rate<3>, rate<4>, rate<5>};
    for (int g = 0; g < 6; g++) CUDA_CHECK(cudaFuncSetAttribute(kern[g], cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    float *out; long long *cyc;
    CUDA_CHECK(cudaMalloc(&out, 4)); CUDA_CHECK(cudaMalloc(&cyc, sms * sizeof(long long)));
    std::vector<long long> h(sms);
    const char *name[6] = {"S, HEADS 256+64: 16 SS + 4 RS n64", "S, all 20 steps RS n64", "P V, HEADS: 4 RS n256",
                           "HEADS tile: S + P V", "S, seesaw 576: 32 SS + 4 RS n64", "P V, seesaw: 4 SS n256"};
    const double flop[6] = {20 * 131072.0, 20 * 131072.0, 4 * 524288.0, 20 * 131072.0 + 4 * 524288.0, 36 * 131072.0, 4 * 524288.0};
    printf("%-36s %3s %10s %10s %8s\n", "group (one warpgroup's)", "wgs", "cyc/group", "flop/clk", "of peak");
    for (int g = 0; g < 6; g++)
        for (int w = 1; w <= 2; w++) {
            kern[g]<<<sms, 128 * w, smem>>>(out, cyc);   // (the first of each is also a warm-up; all are short)
            LAUNCH_CHECK();
            kern[g]<<<sms, 128 * w, smem>>>(out, cyc);
            LAUNCH_CHECK();
            CUDA_CHECK(cudaMemcpy(h.data(), cyc, sms * sizeof(long long), cudaMemcpyDeviceToHost));
            double c = (double)*std::max_element(h.begin(), h.end()) / ITER / w;   // an SM's cycles per warpgroup-group
            printf("%-36s %3d %10.0f %10.0f %7.0f%%\n", name[g], w, c, flop[g] / c, 100 * flop[g] / c / 4096);
        }
    return 0;
}
