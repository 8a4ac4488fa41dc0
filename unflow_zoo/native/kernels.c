/*
 * Fused CPU kernels for the seed paper's two one-hidden-layer flows (float32, one thread).
 *
 * The math, the shapes and the reference implementations in plain torch are in
 * unflow_zoo/transforms/tanh_sum.py (constrained) and unflow_zoo/transforms/relu_integral.py
 * (unconstrained); these loops compute the same quantities in one pass over the hidden
 * units per point instead of one torch kernel launch (and one trip through memory) per
 * elementwise operation. Every array is contiguous, row-major; "g" indexes groups
 * (coordinates x ensemble members), "b" points, "r" hidden units, "k" quadrature nodes.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(UNFLOW_SIMD_EXP)
/* glibc's libmvec has vector expf variants; this declaration lets the compiler use them. */
__attribute__((simd("notinbranch"))) float expf(float);
#endif

/* ------------------------------------------------------------------------------------------
 * Constrained map: z = x w + bias (+ zl), y = c sum_r a tanh z, slope = c sum_r a w sech^2 z.
 * sech^2 z = 4u/(1+u)^2 with u = e^{-2|z|} (no cancellation). If a point's slope sum
 * underflows (every unit saturated), the point is redone with sech^2 scaled by e^{shift},
 * shift = min_r 2|z_r|, so that the log-slope stays exact (see tanh_sum.py); shift is 0
 * otherwise. Nothing is stored per unit: the backward pass recomputes tanh and sech^2 (one
 * exp per unit is cheaper than writing and re-reading two activations). Outputs: y (G,B),
 * logslope (G,B) = log(slope + alpha), shift (G,B), and tanh z (G,B,m) when tout != NULL.
 * ---------------------------------------------------------------------------------------- */
#define INLINE static inline __attribute__((always_inline))

INLINE float row_shift(int64_t m, float xb, const float *restrict wg, const float *restrict bg,
                       const float *restrict zr) {
    float zmin = INFINITY;
    if (zr) {
#pragma omp simd reduction(min : zmin)
        for (int64_t r = 0; r < m; ++r) zmin = fminf(zmin, fabsf(xb * wg[r] + bg[r] + zr[r]));
    } else {
#pragma omp simd reduction(min : zmin)
        for (int64_t r = 0; r < m; ++r) zmin = fminf(zmin, fabsf(xb * wg[r] + bg[r]));
    }
    return 2.0f * zmin;
}

/* sums sy = sum a tanh z and sd = sum a w sech^2(z) e^{shift}; has_zl/want_t are constants
 * at every call site, so each combination compiles to its own vectorised loop */
INLINE void row_forward(const int has_zl, const int want_t, int64_t m, float xb,
                        const float *restrict wg, const float *restrict bg,
                        const float *restrict ag, const float *restrict zr, float shift,
                        float *restrict tr, float *sy_out, float *sd_out) {
    const float es = expf(-shift);
    float sy = 0.0f, sd = 0.0f;
#pragma omp simd reduction(+ : sy, sd)
    for (int64_t r = 0; r < m; ++r) {
        const float z = has_zl ? xb * wg[r] + bg[r] + zr[r] : xb * wg[r] + bg[r];
        const float ut = expf(shift - 2.0f * fabsf(z)); /* e^{-2|z|} e^{shift} */
        const float u = ut * es;                         /* e^{-2|z|} */
        const float inv = 1.0f / (1.0f + u);
        const float th = copysignf((1.0f - u) * inv, z);
        sy += ag[r] * th;
        sd += ag[r] * wg[r] * (4.0f * ut * inv * inv);
        if (want_t) tr[r] = th;
    }
    *sy_out = sy;
    *sd_out = sd;
}

INLINE void row_forward_any(int64_t m, float xb, const float *restrict wg, const float *restrict bg,
                            const float *restrict ag, const float *restrict zr, float shift,
                            float *restrict tr, float *sy, float *sd) {
    if (zr && tr) row_forward(1, 1, m, xb, wg, bg, ag, zr, shift, tr, sy, sd);
    else if (zr) row_forward(1, 0, m, xb, wg, bg, ag, zr, shift, tr, sy, sd);
    else if (tr) row_forward(0, 1, m, xb, wg, bg, ag, zr, shift, tr, sy, sd);
    else row_forward(0, 0, m, xb, wg, bg, ag, zr, shift, tr, sy, sd);
}

/* Groups g = e * D + i (member e, coordinate i); x, y, logslope, shift are (G, B). The
 * block-autoregressive weights, when D > 1: lt (E, D, D, m), lt[e,i,j,:] = the free weights from
 * x_j (j < i) into block i; at (E, D, D, m), at[e,k,i,:] = the free output weights from block
 * i into y_k (k > i). Loops: groups, then blocks of UNITS units, then points, so that a
 * block's weights (and, in backward, their gradient accumulators) stay in cache over all
 * points. work: 2 m + 2 B floats. */
#define UNITS 1024

void tanh_sum_forward(int64_t E, int64_t D, int64_t B, int64_t m, const float *x, const float *w,
                      const float *bias, const float *a, const float *lt, const float *at, float c,
                      float alpha, float *y, float *logslope, float *shiftv, float *work) {
    const int64_t G = E * D;
    float *zrow = work, *trow = work + m, *sys = work + 2 * m, *sds = sys + B;
    memset(y, 0, sizeof(float) * G * B);
    for (int64_t g = 0; g < G; ++g) {
        const int64_t e = g / D, i = g % D;
        const int lower = lt && i > 0, upper = at && i < D - 1;
        memset(sys, 0, sizeof(float) * 2 * B);
        for (int64_t r0 = 0; r0 < m; r0 += UNITS) {
            const int64_t n = m - r0 < UNITS ? m - r0 : UNITS;
            const float *wg = w + g * m + r0, *bg = bias + g * m + r0, *ag = a + g * m + r0;
            for (int64_t b = 0; b < B; ++b) {
                const float xb = x[g * B + b];
                const float *zr = 0;
                if (lower) {
#pragma omp simd
                    for (int64_t r = 0; r < n; ++r) zrow[r] = 0.0f;
                    for (int64_t j = 0; j < i; ++j) {
                        const float xj = x[(e * D + j) * B + b];
                        const float *l = lt + ((e * D + i) * D + j) * m + r0;
#pragma omp simd
                        for (int64_t r = 0; r < n; ++r) zrow[r] += l[r] * xj;
                    }
                    zr = zrow;
                }
                float sy, sd;
                row_forward_any(n, xb, wg, bg, ag, zr, 0.0f, upper ? trow : 0, &sy, &sd);
                sys[b] += sy;
                sds[b] += sd;
                for (int64_t k = i + 1; upper && k < D; ++k) {
                    const float *o = at + ((e * D + k) * D + i) * m + r0;
                    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                    for (int64_t r = 0; r < n; ++r) acc += o[r] * trow[r];
                    y[(e * D + k) * B + b] += c * acc;
                }
            }
        }
        const float *wg = w + g * m, *bg = bias + g * m, *ag = a + g * m;
        for (int64_t b = 0; b < B; ++b) {
            const int64_t row = g * B + b;
            const float xb = x[row];
            float shift = 0.0f, sd = sds[b];
            if (!(c * sd > 1e-30f)) { /* saturated point: redo it scaled by its largest term */
                const float *zr = 0;
                if (lower) {
                    for (int64_t r = 0; r < m; ++r) zrow[r] = 0.0f;
                    for (int64_t j = 0; j < i; ++j) {
                        const float xj = x[(e * D + j) * B + b];
                        const float *l = lt + ((e * D + i) * D + j) * m;
                        for (int64_t r = 0; r < m; ++r) zrow[r] += l[r] * xj;
                    }
                    zr = zrow;
                }
                float sy;
                shift = row_shift(m, xb, wg, bg, zr);
                row_forward_any(m, xb, wg, bg, ag, zr, shift, 0, &sy, &sd);
            }
            y[row] += c * sys[b] + alpha * xb;
            const float lsum = logf(c * sd) - shift; /* log of the network's slope */
            if (alpha > 0.0f) {
                const float la = logf(alpha);
                const float hi = fmaxf(lsum, la), lo = fminf(lsum, la);
                logslope[row] = hi + log1pf(expf(lo - hi));
            } else {
                logslope[row] = lsum;
            }
            shiftv[row] = shift;
        }
    }
}

INLINE float row_backward(const int has_zl, const int has_gt, const int want_gz, const int want_t,
                          int64_t m, float xb, float gyb, float c, float shift, float qq,
                          const float *restrict wg, const float *restrict bg,
                          const float *restrict ag, const float *zr,
                          const float *restrict gtr, float *restrict gwg, float *restrict gbg,
                          float *restrict gag, float *gzr, float *restrict tr) {
    /* zr and gzr may alias (gz overwrites the pre-activation it came from, elementwise) */
    const float es = expf(-shift);
    float sx = 0.0f;
#pragma omp simd reduction(+ : sx)
    for (int64_t r = 0; r < m; ++r) {
        const float zv = has_zl ? xb * wg[r] + bg[r] + zr[r] : xb * wg[r] + bg[r];
        const float ut = expf(shift - 2.0f * fabsf(zv));
        const float u = ut * es;
        const float inv = 1.0f / (1.0f + u);
        const float th = copysignf((1.0f - u) * inv, zv);
        const float s = 4.0f * ut * inv * inv; /* sech^2 z * e^{shift} */
        const float ca = c * ag[r];
        const float gt = has_gt ? gyb * ca + gtr[r] : gyb * ca;
        const float z = s * es * gt - 2.0f * ca * wg[r] * th * s * qq;
        gbg[r] += z;
        gwg[r] += z * xb + ca * s * qq;
        gag[r] += c * (gyb * th + wg[r] * s * qq);
        sx += z * wg[r];
        if (want_gz) gzr[r] = z;
        if (want_t) tr[r] = th;
    }
    return sx;
}

/* Backward. gy, gl (G,B): cotangents of y and logslope. Writes gw, gb, ga (G,m), gx (G,B) when
 * non-NULL, and glt, gat (E,D,D,m) when D > 1 (all zeroed here). work: 3 UNITS floats. */
void tanh_sum_backward(int64_t E, int64_t D, int64_t B, int64_t m, const float *x, const float *w,
                       const float *bias, const float *a, const float *lt, const float *at, float c,
                       float alpha, const float *shiftv, const float *logslope, const float *gy,
                       const float *gl, float *gw, float *gb, float *ga, float *glt, float *gat,
                       float *gx, float *work) {
    const int64_t G = E * D;
    float *zrow = work, *trow = work + UNITS, *grow = work + 2 * UNITS;
    memset(gw, 0, sizeof(float) * G * m);
    memset(gb, 0, sizeof(float) * G * m);
    memset(ga, 0, sizeof(float) * G * m);
    if (glt) memset(glt, 0, sizeof(float) * E * D * D * m);
    if (gat) memset(gat, 0, sizeof(float) * E * D * D * m);
    if (gx) {
        for (int64_t row = 0; row < G * B; ++row) gx[row] = alpha * gy[row];
    }
    for (int64_t g = 0; g < G; ++g) {
        const int64_t e = g / D, i = g % D;
        const int lower = lt && i > 0, upper = at && i < D - 1;
        for (int64_t r0 = 0; r0 < m; r0 += UNITS) {
            const int64_t n = m - r0 < UNITS ? m - r0 : UNITS;
            const float *wg = w + g * m + r0, *bg = bias + g * m + r0, *ag = a + g * m + r0;
            float *gwg = gw + g * m + r0, *gbg = gb + g * m + r0, *gag = ga + g * m + r0;
            for (int64_t b = 0; b < B; ++b) {
                const int64_t row = g * B + b;
                const float xb = x[row], gyb = gy[row], shift = shiftv[row];
                /* dL/d(scaled slope) = gl / (slope + alpha) * e^{-shift} */
                const float qq = gl[row] * expf(-shift - logslope[row]);
                float sx;
                if (!lower && !upper) {
                    sx = row_backward(0, 0, 0, 0, n, xb, gyb, c, shift, qq, wg, bg, ag, 0, 0, gwg, gbg, gag, 0, 0);
                } else {
#pragma omp simd
                    for (int64_t r = 0; r < n; ++r) {
                        zrow[r] = 0.0f;
                        grow[r] = 0.0f;
                    }
                    for (int64_t j = 0; lower && j < i; ++j) {
                        const float xj = x[(e * D + j) * B + b];
                        const float *l = lt + ((e * D + i) * D + j) * m + r0;
#pragma omp simd
                        for (int64_t r = 0; r < n; ++r) zrow[r] += l[r] * xj;
                    }
                    for (int64_t k = i + 1; upper && k < D; ++k) { /* dL/dt from the outputs y_k, k > i */
                        const float gk = c * gy[(e * D + k) * B + b];
                        const float *o = at + ((e * D + k) * D + i) * m + r0;
#pragma omp simd
                        for (int64_t r = 0; r < n; ++r) grow[r] += gk * o[r];
                    }
                    /* gz overwrites zrow (read in the same iteration first), tanh goes to trow */
                    sx = row_backward(1, 1, 1, 1, n, xb, gyb, c, shift, qq, wg, bg, ag, zrow, grow, gwg, gbg, gag,
                                      zrow, trow);
                    for (int64_t j = 0; lower && j < i; ++j) {
                        const int64_t rj = (e * D + j) * B + b;
                        const float xj = x[rj];
                        const float *l = lt + ((e * D + i) * D + j) * m + r0;
                        float *gl_ = glt + ((e * D + i) * D + j) * m + r0;
                        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                        for (int64_t r = 0; r < n; ++r) {
                            gl_[r] += zrow[r] * xj;
                            acc += zrow[r] * l[r];
                        }
                        if (gx) gx[rj] += acc;
                    }
                    for (int64_t k = i + 1; upper && k < D; ++k) {
                        const float gk = c * gy[(e * D + k) * B + b];
                        float *ga_ = gat + ((e * D + k) * D + i) * m + r0;
#pragma omp simd
                        for (int64_t r = 0; r < n; ++r) ga_[r] += gk * trow[r];
                    }
                }
                if (gx) gx[row] += sx;
            }
        }
    }
}

/* ------------------------------------------------------------------------------------------
 * Unconstrained integral of N(t) = sum_r a_r relu(c_r + w_r t) over the K right-Riemann
 * nodes x0 + (x - x0)(k + 1)/K (see relu_integral.py for the switch-point binning).
 * c is (G,B,m), or (G,m) shared by all points when c_shared. phi: 0 elu+1, 1 softplus, 2 exp.
 * Outputs: F (G,B), nx (G,B) = N(x), dphi (G,B,K) = phi'(N) at the nodes (for backward).
 *
 * Autoregressive conditioning (the seed paper's D > 1 layout), when lx != NULL: groups are
 * g = e * D + i and c is the shared bias (G,m) (c_shared = 1) plus the free weights from the
 * raw x_j (j < i) of the same member, lx (E,D,D,m), lx[e,i,j,:] (rows j >= i are ignored):
 * c_r(b) = bias_r + sum_{j<i} lx[e,i,j,r] x_{e*D+j, b}, formed per point in a work row, so the
 * (G,B,m) pre-activations and their gradient are never stored.
 * ---------------------------------------------------------------------------------------- */
static inline float phi_value(float n, int phi) {
    if (phi == 0) return n > 0.0f ? n + 1.0f : expf(n);
    if (phi == 1) return n > 20.0f ? n : log1pf(expf(n));
    return expf(n);
}

static inline float phi_slope(float n, int phi) {
    if (phi == 0) return n > 0.0f ? 1.0f : expf(n);
    if (phi == 1) return 1.0f / (1.0f + expf(-n));
    return expf(n);
}

/* Branch-free (the sign of beta is random across units, so branches would mispredict half the
 * time): the count of nodes (k+1)/K <= tau = -alpha/beta, clamped to [0, K] (NaN for
 * alpha = beta = 0 goes to 0: such a unit contributes nothing), plus K + 1 for falling units
 * (sign bit of beta set; beta = -0 then lands in the right bin through tau = +-inf). The same
 * arithmetic as _switch_bins in relu_integral.py. */
static inline int32_t switch_bin(float al, float be, int32_t K) {
    const float q = floorf(-al / be * (float)K);
    const float p = q > 0.0f ? q : 0.0f; /* not fmaxf: a select compiles to maxss, NaN -> 0 */
    const float v = p < (float)K ? p : (float)K;
    return (int32_t)v + (signbit(be) ? K + 1 : 0);
}

/* crow = bias + sum_{j<ic} l[j,:] * xs[j * stride] (one pass per j: ic is small) */
INLINE void ar_conditioning(int64_t m, int64_t ic, const float *restrict bias, const float *restrict l,
                            const float *xs, int64_t stride, float *restrict crow) {
#pragma omp simd
    for (int64_t r = 0; r < m; ++r) crow[r] = bias[r];
    for (int64_t j = 0; j < ic; ++j) {
        const float xj = xs[j * stride];
        const float *restrict lj = l + j * m;
#pragma omp simd
        for (int64_t r = 0; r < m; ++r) crow[r] += lj[r] * xj;
    }
}

/* the bins are accumulated in NCOPY interleaved tables so that consecutive units hitting the
 * same bin do not serialise on one memory location */
#define NCOPY 4

void relu_integral_forward(int64_t G, int64_t B, int64_t m, int64_t K, const float *x,
                           const float *x0, const float *cc, int c_shared, const float *w,
                           const float *a, const float *weights, int phi, float eps, float *F,
                           float *nx, float *dphi, float *work, int64_t D, const float *lx) {
    const int64_t T = 2 * K + 2;
    float *bp = work, *bq = work + NCOPY * T, *pa = work + 2 * NCOPY * T, *pb = pa + m;
    int32_t *ibin = (int32_t *)(pb + m);
    float *crow = (float *)(ibin + m);
    for (int64_t g = 0; g < G; ++g) {
        const float *wg = w + g * m, *ag = a + g * m;
        const float xl = x0[g];
        const int64_t e = g / D, ic = g % D; /* member, coordinate */
        for (int64_t b = 0; b < B; ++b) {
            const int64_t row = g * B + b;
            const float d = x[row] - xl;
            const float *cr = c_shared ? cc + g * m : cc + row * m;
            if (lx && ic > 0) {
                ar_conditioning(m, ic, cr, lx + (e * D + ic) * D * m, x + e * D * B + b, B, crow);
                cr = crow;
            }
            memset(work, 0, sizeof(float) * 2 * NCOPY * T);
            /* vectorised pass: every unit's bin and terms; then the scatter, the only scalar part */
            float n_at_x = 0.0f;
#pragma omp simd reduction(+ : n_at_x)
            for (int64_t r = 0; r < m; ++r) {
                const float al = cr[r] + wg[r] * xl, be = wg[r] * d;
                n_at_x += (al + be > 0.0f) ? ag[r] * (al + be) : 0.0f;
                ibin[r] = switch_bin(al, be, (int32_t)K) * NCOPY + (int32_t)(r & (NCOPY - 1));
                pa[r] = ag[r] * al;
                pb[r] = ag[r] * be;
            }
            for (int64_t r = 0; r < m; ++r) {
                bp[ibin[r]] += pa[r];
                bq[ibin[r]] += pb[r];
            }
            for (int64_t i = 0; i < T; ++i) {
                float sp = 0.0f, sq = 0.0f;
                for (int j = 0; j < NCOPY; ++j) {
                    sp += bp[i * NCOPY + j];
                    sq += bq[i * NCOPY + j];
                }
                bp[i] = sp; /* i * NCOPY >= i: reads stay ahead of writes */
                bq[i] = sq;
            }
            /* rising units are on at node k if their bin <= k, falling ones if bin - (K+1) > k;
             * turn the falling half into suffix sums in place */
            float on_r = 0.0f, sl_r = 0.0f, on_f = 0.0f, sl_f = 0.0f, total = 0.0f;
            float *dp = dphi + row * K;
            for (int64_t k = K - 1; k >= 0; --k) {
                on_f += bp[K + 2 + k];
                sl_f += bq[K + 2 + k];
                bp[K + 2 + k] = on_f;
                bq[K + 2 + k] = sl_f;
            }
            for (int64_t k = 0; k < K; ++k) {
                on_r += bp[k];
                sl_r += bq[k];
                const float s = (float)(k + 1) / (float)K;
                const float n = (on_r + bp[K + 2 + k]) + s * (sl_r + bq[K + 2 + k]);
                total += weights[k] * phi_value(n, phi);
                dp[k] = phi_slope(n, phi);
            }
            F[row] = d * total + eps * d;
            nx[row] = n_at_x;
        }
    }
}

/* Backward. gF, gnx (G,B). Writes gc (G,B,m) (or accumulates (G,m) when c_shared) when
 * non-NULL, accumulates gw (G,m) and ga (G,m) when non-NULL (zeroed here), gx (G,B) when
 * non-NULL (Leibniz rule for the integral plus dN(x)/dx). */
void relu_integral_backward(int64_t G, int64_t B, int64_t m, int64_t K, const float *x,
                            const float *x0, const float *cc, int c_shared, const float *w,
                            const float *a, const float *weights, int phi, float eps,
                            const float *nx, const float *dphi, const float *gF,
                            const float *gnx, float *gc, float *gw, float *ga, float *gx,
                            float *work, int64_t D, const float *lx, float *glx) {
    float *tg = work, *tgs = work + (2 * K + 2);
    float *crow = work + 4 * K + 4, *grow = crow + m;
    if (gw) memset(gw, 0, sizeof(float) * G * m);
    if (ga) memset(ga, 0, sizeof(float) * G * m);
    if (gc && c_shared) memset(gc, 0, sizeof(float) * G * m);
    if (glx) memset(glx, 0, sizeof(float) * G * D * m);
    for (int64_t g = 0; g < G; ++g) {
        const float *wg = w + g * m, *ag = a + g * m;
        float *gwg = gw ? gw + g * m : 0, *gag = ga ? ga + g * m : 0;
        const float xl = x0[g];
        const int64_t e = g / D, ic = g % D; /* member, coordinate */
        for (int64_t b = 0; b < B; ++b) {
            const int64_t row = g * B + b;
            const float d = x[row] - xl;
            const float *cr = c_shared ? cc + g * m : cc + row * m;
            if (lx && ic > 0) {
                ar_conditioning(m, ic, cr, lx + (e * D + ic) * D * m, x + e * D * B + b, B, crow);
                cr = crow;
            }
            float *gcr = gc ? (c_shared ? gc + g * m : gc + row * m) : 0;
            const float *dp = dphi + row * K;
            const float scale = gF[row] * d, gn = gnx[row];
            /* table: [suffix sums over k >= k0 for k0 = 0..K | prefix sums over k < k1 for k1 = 0..K] */
            float acc = 0.0f, accs = 0.0f;
            tg[K] = 0.0f;
            tgs[K] = 0.0f;
            for (int64_t k = K - 1; k >= 0; --k) {
                const float v = scale * weights[k] * dp[k];
                acc += v;
                accs += v * (float)(k + 1) / (float)K;
                tg[k] = acc;
                tgs[k] = accs;
            }
            acc = 0.0f;
            accs = 0.0f;
            tg[K + 1] = 0.0f;
            tgs[K + 1] = 0.0f;
            for (int64_t k = 0; k < K; ++k) {
                const float v = scale * weights[k] * dp[k];
                acc += v;
                accs += v * (float)(k + 1) / (float)K;
                tg[K + 2 + k] = acc;
                tgs[K + 2 + k] = accs;
            }
            float sx = 0.0f;
            if (gcr && !c_shared && gwg && !gag) {
                /* the training case (c per point, w trained, a fixed): one vectorised loop with gathers */
#pragma omp simd reduction(+ : sx)
                for (int64_t r = 0; r < m; ++r) {
                    const float al = cr[r] + wg[r] * xl, be = wg[r] * d;
                    const int32_t i = switch_bin(al, be, (int32_t)K);
                    const float on = (al + be) > 0.0f ? gn : 0.0f;
                    const float ga_ = ag[r] * (tg[i] + on), gb_ = ag[r] * (tgs[i] + on);
                    gcr[r] = ga_;
                    gwg[r] += ga_ * xl + gb_ * d;
                    sx += on * ag[r] * wg[r];
                }
            } else if (gcr && c_shared && gwg && !gag) {
#pragma omp simd reduction(+ : sx)
                for (int64_t r = 0; r < m; ++r) {
                    const float al = cr[r] + wg[r] * xl, be = wg[r] * d;
                    const int32_t i = switch_bin(al, be, (int32_t)K);
                    const float on = (al + be) > 0.0f ? gn : 0.0f;
                    const float ga_ = ag[r] * (tg[i] + on), gb_ = ag[r] * (tgs[i] + on);
                    gcr[r] += ga_;
                    gwg[r] += ga_ * xl + gb_ * d;
                    sx += on * ag[r] * wg[r];
                    if (lx) grow[r] = ga_; /* for the x_{<i} weights below (loop-invariant test) */
                }
            } else {
                for (int64_t r = 0; r < m; ++r) {
                    const float al = cr[r] + wg[r] * xl, be = wg[r] * d;
                    const int32_t i = switch_bin(al, be, (int32_t)K);
                    const float on = (al + be) > 0.0f ? gn : 0.0f; /* a select, not a branch */
                    const float t1 = tg[i] + on, t2 = tgs[i] + on;
                    const float ga_ = ag[r] * t1, gb_ = ag[r] * t2;
                    if (gcr) {
                        if (c_shared) gcr[r] += ga_;
                        else gcr[r] = ga_;
                    }
                    grow[r] = ga_;
                    if (gwg) gwg[r] += ga_ * xl + gb_ * d;
                    if (gag) gag[r] += al * t1 + be * t2;
                    sx += on * ag[r] * wg[r];
                }
            }
            if (gx) gx[row] = gF[row] * (phi_value(nx[row], phi) + eps) + sx;
            if (lx && ic > 0 && (glx || gx)) { /* through c: the weights from x_{<i}, and x_{<i} */
                const float *l = lx + (e * D + ic) * D * m;
                float *gl_ = glx ? glx + (e * D + ic) * D * m : 0;
                for (int64_t j = 0; j < ic; ++j) {
                    const int64_t rj = (e * D + j) * B + b;
                    const float xj = x[rj];
                    float acc = 0.0f;
                    if (gl_) {
#pragma omp simd reduction(+ : acc)
                        for (int64_t r = 0; r < m; ++r) {
                            gl_[j * m + r] += grow[r] * xj;
                            acc += grow[r] * l[j * m + r];
                        }
                    } else {
#pragma omp simd reduction(+ : acc)
                        for (int64_t r = 0; r < m; ++r) acc += grow[r] * l[j * m + r];
                    }
                    if (gx) gx[rj] += acc; /* row rj (group j < i) was written before this group */
                }
            }
        }
    }
}
