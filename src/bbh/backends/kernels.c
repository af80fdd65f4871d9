/* Memory-bound CPU kernels for hypernet output layers (see bbh/native.py).
 *
 * The LeNet-5 BbH step streams ~222 M output-layer weights W [P, H] through four operations with only a
 * handful (M = S = 5) of rows on the other side: y = h W^T + b, dh = dy W, and the optimizer update with the
 * rank-S gradient dW = dy^T h. BLAS packs W for these skinny products and runs at a fraction of the memory
 * bandwidth; these loops read each row of W once, keep the M-row operand in L1, and for the optimizer form
 * the gradient row in registers right before updating it, so W and its optimizer state are each read and
 * written exactly once per step. Every function works on a row range [r0, r1) so that the caller can split
 * rows over threads.
 *
 * All tensors are float32; W-shaped tensors are contiguous [P, H] (row stride H).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_M 8  /* rows of h handled per pass over a row of W */

/* 16 floats as one value (GCC/Clang vector extension): one AVX-512 register, two AVX2 ones, or plain
 * scalars elsewhere. ``aligned(4)`` allows loads at any float address. Local variables of this type stay in
 * registers, where a float[16] accumulator array would be spilled to the stack at every step. */
typedef float v16 __attribute__((vector_size(64), aligned(4)));

static inline float hsum(v16 a) {
    float s = 0.0f;
    for (int l = 0; l < 16; ++l) s += a[l];
    return s;
}

#define ACC(j) v16 a##j = {0};
#define FMA(j) if (MM > j) a##j += x * *(const v16 *)(h + j * H + k);
#define TAIL(j) if (MM > j) { float s = hsum(a##j); for (int64_t kk = k; kk < H; ++kk) s += w[kk] * h[j * H + kk]; \
                              out[j * ldo + r] = s + (b ? b[r] : 0.0f); }

/* Rows [r0, r1) of out for MM <= 8 (a compile-time constant after inlining) rows of h starting at h. */
static inline __attribute__((always_inline)) void forward_rows(const float *W, const float *h, const float *b,
                                                               float *out, int64_t H, const int64_t MM,
                                                               int64_t ldo, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
        const float *w = W + r * H;
        ACC(0) ACC(1) ACC(2) ACC(3) ACC(4) ACC(5) ACC(6) ACC(7)
        int64_t k = 0;
        for (; k + 16 <= H; k += 16) {
            const v16 x = *(const v16 *)(w + k);
            FMA(0) FMA(1) FMA(2) FMA(3) FMA(4) FMA(5) FMA(6) FMA(7)
        }
        TAIL(0) TAIL(1) TAIL(2) TAIL(3) TAIL(4) TAIL(5) TAIL(6) TAIL(7)
    }
}

/* out[m * ldo + r] = b[r] + sum_k W[r, k] h[m, k]  for r in [r0, r1), m < M (b may be NULL). */
void bbh_head_forward(const float *W, const float *h, const float *b, float *out, int64_t H, int64_t M,
                      int64_t ldo, int64_t r0, int64_t r1) {
    for (int64_t m0 = 0; m0 < M; m0 += MAX_M) {
        const float *hm = h + m0 * H;
        float *om = out + m0 * ldo;
        switch (M - m0 < MAX_M ? M - m0 : MAX_M) { /* one specialised loop nest per row count */
        case 1: forward_rows(W, hm, b, om, H, 1, ldo, r0, r1); break;
        case 2: forward_rows(W, hm, b, om, H, 2, ldo, r0, r1); break;
        case 3: forward_rows(W, hm, b, om, H, 3, ldo, r0, r1); break;
        case 4: forward_rows(W, hm, b, om, H, 4, ldo, r0, r1); break;
        case 5: forward_rows(W, hm, b, om, H, 5, ldo, r0, r1); break;
        case 6: forward_rows(W, hm, b, om, H, 6, ldo, r0, r1); break;
        case 7: forward_rows(W, hm, b, om, H, 7, ldo, r0, r1); break;
        default: forward_rows(W, hm, b, om, H, 8, ldo, r0, r1); break;
        }
    }
}

/* acc[m, k] += sum_{r in [r0, r1)} dy[m * lddy + r] W[r, k]  (acc [M, H], a per-thread partial sum). */
void bbh_head_input_grad(const float *dy, const float *W, float *acc, int64_t H, int64_t M, int64_t lddy,
                         int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
        const float *w = W + r * H;
        for (int64_t m = 0; m < M; ++m) {
            const float c = dy[m * lddy + r];
            float *a = acc + m * H;
            for (int64_t k = 0; k < H; ++k) a[k] += c * w[k];
        }
    }
}

/* g[k] = sum_s L[r, s] R[s, k] (+ G[r, k]): row r of a gradient given as factors L [P, S] (strides ls0, ls1),
 * R [S, H] contiguous, plus an optional dense part G [P, H]. */
static inline void grad_row(float *g, const float *L, int64_t ls0, int64_t ls1, const float *R, int64_t S,
                            const float *G, int64_t H, int64_t r) {
    if (G)
        memcpy(g, G + r * H, (size_t)H * sizeof(float));
    else
        memset(g, 0, (size_t)H * sizeof(float));
    for (int64_t s = 0; s < S; ++s) {
        const float c = L[r * ls0 + s * ls1];
        const float *rs = R + s * H;
        for (int64_t k = 0; k < H; ++k) g[k] += c * rs[k];
    }
}

/* Adam on rows [r0, r1) with the gradient dW = L R (+ G), as torch.optim.Adam (fused CPU kernel):
 *   m <- m + (1 - b1)(g - m);  v <- b2 v + (1 - b2) g^2;  p <- p - step_size m / (sqrt(v) / bc2_sqrt + eps)
 * with step_size = lr / (1 - b1^t) and bc2_sqrt = sqrt(1 - b2^t). g is a caller-provided row buffer [H]. */
void bbh_factored_adam(float *p, float *mom, float *vel, const float *L, int64_t ls0, int64_t ls1,
                       const float *R, int64_t S, const float *G, float *g, int64_t H, double b1, double b2,
                       double eps, double step_size, double bc2_sqrt, int64_t r0, int64_t r1) {
    const float one_minus_b1 = (float)(1.0 - b1), fb2 = (float)b2, one_minus_b2 = (float)(1.0 - b2);
    const float feps = (float)eps, fstep = (float)step_size, inv_bc2 = (float)(1.0 / bc2_sqrt);
    for (int64_t r = r0; r < r1; ++r) {
        grad_row(g, L, ls0, ls1, R, S, G, H, r);
        float *pr = p + r * H, *mr = mom + r * H, *vr = vel + r * H;
        for (int64_t k = 0; k < H; ++k) {
            const float gk = g[k];
            const float m = mr[k] + one_minus_b1 * (gk - mr[k]);
            const float v = fb2 * vr[k] + one_minus_b2 * gk * gk;
            mr[k] = m;
            vr[k] = v;
            pr[k] -= fstep * m / (sqrtf(v) * inv_bc2 + feps);
        }
    }
}

/* RMSProp with TensorFlow 1 semantics on rows [r0, r1), gradient dW = L R (+ G):
 *   v <- decay v + (1 - decay) g^2;  p <- p - lr g / sqrt(v + eps). */
void bbh_factored_rmsprop_tf(float *p, float *vel, const float *L, int64_t ls0, int64_t ls1, const float *R,
                             int64_t S, const float *G, float *g, int64_t H, double lr, double decay, double eps,
                             int64_t r0, int64_t r1) {
    const float fdecay = (float)decay, one_minus = (float)(1.0 - decay), flr = (float)lr, feps = (float)eps;
    for (int64_t r = r0; r < r1; ++r) {
        grad_row(g, L, ls0, ls1, R, S, G, H, r);
        float *pr = p + r * H, *vr = vel + r * H;
        for (int64_t k = 0; k < H; ++k) {
            const float gk = g[k];
            const float v = fdecay * vr[k] + one_minus * gk * gk;
            vr[k] = v;
            pr[k] -= flr * gk / sqrtf(v + feps);
        }
    }
}

/* ---- The per-weight nearest-neighbour KL estimator (bbh/kl.py, paper Eq. 2 with d = 1) ----------------
 * For columns [c0, c1) of q [n, D] (posterior samples) and p [m, D] (prior samples), both contiguous:
 *   rho2_ik = min_j (q_ik - p_jk)^2 + eps,   nu2_ik = min_{j != i} (q_ik - q_jk)^2 + eps,
 *   *value  = 0.5 * sum_{i, k} (log rho2_ik - log nu2_ik)          (the caller divides by n),
 *   grad_ik = [(q_ik - p_j*k) / rho2_ik - (q_ik - q_k*k) / nu2_ik + sum_{i': k*(i') = i} (q_i'k - q_ik) / nu2_i'k] / n
 * (j* the nearest prior sample, k* the nearest other posterior sample). 16 columns at a time in vectors;
 * ties go to the first index, as torch.min. */
typedef int32_t v16i __attribute__((vector_size(64), aligned(4)));

static inline v16 select16(v16i mask, v16 a, v16 b) { return (v16)(((v16i)a & mask) | ((v16i)b & ~mask)); }

static inline v16 load16(const float *x, int64_t cnt) {
    if (cnt == 16) return *(const v16 *)x;
    v16 v = {0};
    for (int64_t l = 0; l < cnt; ++l) v[l] = x[l];
    return v;
}

/* Natural log of 16 positive, normal floats (the Cephes logf polynomial, max relative error ~1e-7):
 * x = 2^e m with m in [sqrt(1/2), sqrt(2)), log x = e log 2 + log1p(m - 1). */
static inline v16 log16(v16 x) {
    const v16i bits = (v16i)x;
    v16i e = ((bits >> 23) & 0xff) - 126;
    v16 m = (v16)((bits & 0x007fffff) | 0x3f000000); /* in [0.5, 1) */
    const v16i small = m < 0.70710678f;
    e = e + small; /* small is -1 where true */
    m = m - 1.0f + (v16)((v16i)m & small);
    const v16 z = m * m;
    v16 y = 7.0376836292e-2f * m - 1.1514610310e-1f;
    y = y * m + 1.1676998740e-1f;
    y = y * m - 1.2420140846e-1f;
    y = y * m + 1.4249322787e-1f;
    y = y * m - 1.6668057665e-1f;
    y = y * m + 2.0000714765e-1f;
    y = y * m - 2.4999993993e-1f;
    y = y * m + 3.3333331174e-1f;
    y = y * m * z;
    const v16 fe = __builtin_convertvector(e, v16);
    y = y - 2.12194440e-4f * fe - 0.5f * z;
    return m + y + 0.693359375f * fe;
}

void bbh_nn_kl_per_weight(const float *q, const float *p, float *grad, double *value, int64_t n, int64_t m,
                          int64_t D, double eps, int64_t c0, int64_t c1) {
    const float feps = (float)eps, inv_n = 1.0f / (float)n;
    double total = 0.0;
    for (int64_t c = c0; c < c1; c += 16) {
        const int64_t cnt = c1 - c < 16 ? c1 - c : 16;
        for (int64_t i = 0; i < n; ++i)
            for (int64_t l = 0; l < cnt; ++l) grad[i * D + c + l] = 0.0f;
        for (int64_t i = 0; i < n; ++i) {
            const v16 qi = load16(q + i * D + c, cnt);
            v16 best2 = qi - load16(p + c, cnt), bestd = best2;
            best2 = best2 * best2;
            for (int64_t j = 1; j < m; ++j) {
                const v16 d = qi - load16(p + j * D + c, cnt), d2 = d * d;
                const v16i closer = d2 < best2;
                best2 = select16(closer, d2, best2);
                bestd = select16(closer, d, bestd);
            }
            v16 nb2, nbd = {0};
            v16i partner = {0};
            for (int l = 0; l < 16; ++l) nb2[l] = INFINITY;
            for (int64_t j = 0; j < n; ++j) {
                if (j == i) continue;
                const v16 d = qi - load16(q + j * D + c, cnt), d2 = d * d;
                const v16i closer = d2 < nb2;
                nb2 = select16(closer, d2, nb2);
                nbd = select16(closer, d, nbd);
                partner = (closer & (int32_t)j) | (partner & ~closer);
            }
            const v16 rho2 = best2 + feps, nu2 = nb2 + feps;
            const v16 push = nbd / nu2 * inv_n, own = bestd / rho2 * inv_n - push;
            const v16 log_ratio = log16(rho2) - log16(nu2);
            for (int64_t l = 0; l < cnt; ++l) {
                total += (double)log_ratio[l];
                grad[i * D + c + l] += own[l];
                grad[partner[l] * D + c + l] += push[l];
            }
        }
    }
    *value = 0.5 * total;
}
