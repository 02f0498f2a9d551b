// tools/racecheck_probe.cu: which named-barrier hand-overs does compute-sanitizer's racecheck report?
// (README "Tests": the decode kernels' reports.) Two warpgroups of one block share `s`; MODE picks the pattern:
//   nvcc -gencode=arch=compute_90a,code=sm_90a tools/racecheck_probe.cu -o /tmp/probe
//   for m in 4 5 6 7 8 9 10 11 12; do compute-sanitizer --tool racecheck /tmp/probe $m | grep SUMMARY; done
// On an H100 (2026-12-07): mode 4 gives 7 hazards, modes 5-9 none; mode 10 none, mode 11 8, mode 12 none.
// 4: loop 8x: wg0 writes, arrive 1; wg1 sync 1 reads, arrive 2; wg0 sync 2 (WAR by reader-arrive)
// 5: the same loop with __syncthreads (control)
// 6: single WAR: wg1 reads, bar.arrive 1; wg0 bar.sync 1, writes
// 7: single RAW with both bar.sync 1 but written by lane%4==0 only (l_s pattern)
// 8: 7 preceded by per-warpgroup bar.sync 2+wg,128
// 9: single WAR with both bar.sync 1,256 (control)
// 10: mode 4 with two buffers, round k writing buffer k % 2
// 11: the seesaw kernel's hand-overs, 8 pairs: wg0 writes (m, a), arrive A; wg1 sync A, reads them,
//     writes (m, b), arrive B, arrive PB, sync PA; wg0 sync B, reads b, arrive PA, sync PB
// 12: mode 11 with wg0 reading b after sync PB (and arriving on PA after that)
#include <cstdio>
#include <cstdlib>
#define SYNC(id) asm volatile("bar.sync %0, 256;" :: "r"(id) : "memory")
#define ARR(id) asm volatile("bar.arrive %0, 256;" :: "r"(id) : "memory")
__global__ void k(int mode, float *out) {
    __shared__ float s[128], s2[2][128];
    int t = threadIdx.x & 127, wg = threadIdx.x >> 7, lane = t & 31;
    float acc = 0;
    if (mode == 4 || mode == 5) {
        for (int it = 0; it < 8; it++) {
            if (wg == 0) s[t] = t + it;
            if (mode == 5) __syncthreads(); else if (wg == 0) ARR(1); else SYNC(1);
            if (wg == 1) acc += s[(t + 1) & 127];
            if (mode == 5) __syncthreads(); else if (wg == 1) ARR(2); else SYNC(2);
        }
    } else if (mode == 6 || mode == 9) {
        if (wg == 1) acc = s[(t + 1) & 127];
        if (mode == 9) SYNC(1); else if (wg == 1) ARR(1); else SYNC(1);
        if (wg == 0) s[t] = t;
    } else if (mode == 7 || mode == 8) {
        if (mode == 8) asm volatile("bar.sync %0, 128;" :: "r"(2 + wg) : "memory");
        if ((lane & 3) == 0) s[wg * 64 + (t >> 2)] = t;
        SYNC(1);
        acc = s[(t >> 2)] + s[64 + (t >> 2)];
    }
    if (mode == 10) {
        for (int it = 0; it < 8; it++) {
            if (wg == 0) s2[it & 1][t] = t + it;
            if (wg == 0) ARR(1); else SYNC(1);
            if (wg == 1) acc += s2[it & 1][(t + 1) & 127];
            if (wg == 1) ARR(2); else SYNC(2);
        }
    } else if (mode == 11 || mode == 12) {
        enum { A = 1, B = 2, PA = 3, PB = 4 };
        float *m_s = s, *sc = s2[0];             // sc: a (rows 0..31), b (64..95); the values do not matter
        int r = t >> 2;                          // this thread's row, written by one lane in four
        for (int p = 0; p < 8; p++) {
            if (wg == 0) {
                float m0 = m_s[r], mA = fmaxf(m0, (float)p);
                __syncwarp();
                if ((lane & 3) == 0) { m_s[r] = mA; sc[r] = m0; }
                ARR(A);
                SYNC(B);
                if (mode == 11) { acc += sc[64 + r]; ARR(PA); SYNC(PB); }
                else { SYNC(PB); acc += sc[64 + r]; ARR(PA); }
            } else {
                SYNC(A);
                float mA = m_s[r], mB = fmaxf(mA, p + 0.5f);
                acc += sc[r];
                __syncwarp();
                if ((lane & 3) == 0) { m_s[r] = mB; sc[64 + r] = mA; }
                ARR(B);
                ARR(PB);
                SYNC(PA);
            }
        }
    }
    out[threadIdx.x] = acc;
}
int main(int argc, char **argv) {
    int mode = argc > 1 ? atoi(argv[1]) : 4;
    float *d; cudaMalloc(&d, 1024);
    cudaMemset(d, 0, 1024);
    k<<<1, 256>>>(mode, d);
    cudaError_t e = cudaDeviceSynchronize();
    printf("mode %d: %s\n", mode, cudaGetErrorString(e));
    return e != cudaSuccess;
}
