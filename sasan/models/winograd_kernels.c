/* Tile transforms of Winograd F(4x4, 3x3) for fp32 CPU training (sasan/models/winograd.py).
 *
 * Compiled at first use by sasan/models/winograd_kernels.py with the system C compiler
 * (-O3 -march=native) and called through ctypes; PyTorch does the matrix products.
 * Each function handles the image planes [p0, p1) of one tensor, so the caller can split
 * the planes across threads (ctypes releases the GIL during the call).
 *
 * Layouts (T = th * tw tiles per plane, tile (ti, tj) -> t = ti * tw + tj; a tile covers
 * output rows 4ti..4ti+3 and reads input rows 4ti-1..4ti+4, zero outside the image):
 *   x, dx, y, dy: planes of H x W, contiguous
 *   v, dv, m, dm: (36, C, N, T) for planes (n, c) = n * C + c: one GEMM per transform
 *                 position p = column * 6 + row multiplies all images at once
 *
 *   wino_in      v  = B^T d B       for every 6x6 input tile d of x
 *   wino_in_t    dx = sum of B dv B^T over the tiles (overlap-add): transpose of wino_in
 *   wino_out     y  = A^T m A + bias[c]
 *   wino_out_t   dm = A dy A^T: transpose of wino_out (no bias)
 *
 * B^T, A^T: Lavin & Gray 2016, interpolation points 0, 1, -1, 2, -2, infinity.  Every loop
 * over tiles runs on contiguous arrays: rows are de-interleaved into four phase arrays
 * (columns 4j, 4j+1, 4j+2, 4j+3) first, so the compiler can vectorise across tiles.  The
 * loops live in small helpers whose pointer parameters are restrict-qualified: compilers
 * honour restrict on parameters, and without it gcc gives up on the alias checks.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__AVX__) || defined(__SSE__)
#include <immintrin.h>
#endif

/* Copy n floats to dst; with nt, through non-temporal stores where the CPU has them: the
 * large outputs (over half the last-level cache) are not read again soon, and plain stores
 * would first read every destination line into the cache (a third more memory traffic). */
static void put(float *restrict dst, const float *restrict src, long n, int nt)
{
#if defined(__AVX512F__) || defined(__AVX__) || defined(__SSE__)
#if defined(__AVX512F__)
    enum { VEC = 16 };
#define STREAM_(d, s) _mm512_stream_ps((d), _mm512_loadu_ps(s))
#elif defined(__AVX__)
    enum { VEC = 8 };
#define STREAM_(d, s) _mm256_stream_ps((d), _mm256_loadu_ps(s))
#else
    enum { VEC = 4 };
#define STREAM_(d, s) _mm_stream_ps((d), _mm_loadu_ps(s))
#endif
    if (nt) {
        long i = 0;
        while (i < n && ((uintptr_t)(dst + i) % (VEC * sizeof(float)))) { dst[i] = src[i]; i++; }
        for (; i + VEC <= n; i += VEC) STREAM_(dst + i, src + i);
        for (; i < n; i++) dst[i] = src[i];
        return;
    }
#undef STREAM_
#endif
    memcpy(dst, src, sizeof(float) * n);
}

static void fence(int nt)
{
#if defined(__SSE__)
    if (nt) _mm_sfence();
#else
    (void)nt;
#endif
}

/* B^T applied to six values (o_i = sum_j B^T[i][j] d_j) */
#define BT6(d0, d1, d2, d3, d4, d5, o0, o1, o2, o3, o4, o5) do { \
    float s12_ = (d1) + (d2), d12_ = (d1) - (d2), d31_ = (d3) - (d1);  \
    (o0) = 4.0f * (d0) - 5.0f * (d2) + (d4);                           \
    (o1) = (d4) + (d3) - 4.0f * s12_;                                  \
    (o2) = (d4) - (d3) + 4.0f * d12_;                                  \
    (o3) = (d4) - (d2) + 2.0f * d31_;                                  \
    (o4) = (d4) - (d2) - 2.0f * d31_;                                  \
    (o5) = 4.0f * (d1) - 5.0f * (d3) + (d5);                           \
} while (0)

/* B applied to six values (o_j = sum_i B^T[i][j] v_i): the transpose of BT6 */
#define B6(v0, v1, v2, v3, v4, v5, o0, o1, o2, o3, o4, o5) do {  \
    float s12_ = (v1) + (v2), d34_ = (v3) - (v4), s34_ = (v3) + (v4); \
    (o0) = 4.0f * (v0);                                                \
    (o1) = 4.0f * ((v2) - (v1) + (v5)) - 2.0f * d34_;                  \
    (o2) = -5.0f * (v0) - 4.0f * s12_ - s34_;                          \
    (o3) = (v1) - (v2) + 2.0f * d34_ - 5.0f * (v5);                    \
    (o4) = (v0) + s12_ + s34_;                                         \
    (o5) = (v5);                                                       \
} while (0)

/* A^T applied to six values (o_r = sum_i A^T[r][i] d_i) */
#define AT6(d0, d1, d2, d3, d4, d5, o0, o1, o2, o3) do {            \
    float s12_ = (d1) + (d2), d12_ = (d1) - (d2);                     \
    float s34_ = (d3) + (d4), d34_ = (d3) - (d4);                     \
    (o0) = (d0) + s12_ + s34_;                                        \
    (o1) = d12_ + 2.0f * d34_;                                        \
    (o2) = s12_ + 4.0f * s34_;                                        \
    (o3) = d12_ + 8.0f * d34_ + (d5);                                 \
} while (0)

/* A applied to four values (o_i = sum_r A^T[r][i] e_r): the transpose of AT6 */
#define A4(e0, e1, e2, e3, o0, o1, o2, o3, o4, o5) do {             \
    float s02_ = (e0) + (e2), s13_ = (e1) + (e3);                     \
    float f02_ = (e0) + 4.0f * (e2), f13_ = 2.0f * (e1) + 8.0f * (e3); \
    (o0) = (e0);                                                      \
    (o1) = s02_ + s13_;                                               \
    (o2) = s02_ - s13_;                                               \
    (o3) = f02_ + f13_;                                               \
    (o4) = f02_ - f13_;                                               \
    (o5) = (e3);                                                      \
} while (0)

/* ---- element-wise helpers over n lanes (vectorised by the compiler) ---- */

static void bt6(long n, const float *restrict d0, const float *restrict d1, const float *restrict d2,
                const float *restrict d3, const float *restrict d4, const float *restrict d5,
                float *restrict o0, float *restrict o1, float *restrict o2, float *restrict o3,
                float *restrict o4, float *restrict o5)
{
    for (long j = 0; j < n; j++)
        BT6(d0[j], d1[j], d2[j], d3[j], d4[j], d5[j], o0[j], o1[j], o2[j], o3[j], o4[j], o5[j]);
}

static void b6(long n, const float *restrict v0, const float *restrict v1, const float *restrict v2,
               const float *restrict v3, const float *restrict v4, const float *restrict v5,
               float *restrict o0, float *restrict o1, float *restrict o2, float *restrict o3,
               float *restrict o4, float *restrict o5)
{
    for (long j = 0; j < n; j++)
        B6(v0[j], v1[j], v2[j], v3[j], v4[j], v5[j], o0[j], o1[j], o2[j], o3[j], o4[j], o5[j]);
}

static void at6(long n, const float *restrict d0, const float *restrict d1, const float *restrict d2,
                const float *restrict d3, const float *restrict d4, const float *restrict d5, float b,
                float *restrict o0, float *restrict o1, float *restrict o2, float *restrict o3)
{
    for (long j = 0; j < n; j++) {
        float r0, r1, r2, r3;
        AT6(d0[j], d1[j], d2[j], d3[j], d4[j], d5[j], r0, r1, r2, r3);
        o0[j] = r0 + b; o1[j] = r1 + b; o2[j] = r2 + b; o3[j] = r3 + b;
    }
}

static void a4(long n, const float *restrict e0, const float *restrict e1, const float *restrict e2,
               const float *restrict e3, float *restrict o0, float *restrict o1, float *restrict o2,
               float *restrict o3, float *restrict o4, float *restrict o5)
{
    for (long j = 0; j < n; j++)
        A4(e0[j], e1[j], e2[j], e3[j], o0[j], o1[j], o2[j], o3[j], o4[j], o5[j]);
}

/* src[4j + s] -> d_s[j] */
static void deinterleave4(long n, const float *restrict src, float *restrict d0, float *restrict d1,
                          float *restrict d2, float *restrict d3)
{
    for (long j = 0; j < n; j++) {
        d0[j] = src[4 * j]; d1[j] = src[4 * j + 1]; d2[j] = src[4 * j + 2]; d3[j] = src[4 * j + 3];
    }
}

/* d_s[j] -> dst[4j + s] */
static void interleave4(long n, const float *restrict d0, const float *restrict d1,
                        const float *restrict d2, const float *restrict d3, float *restrict dst)
{
    for (long j = 0; j < n; j++) {
        dst[4 * j] = d0[j]; dst[4 * j + 1] = d1[j]; dst[4 * j + 2] = d2[j]; dst[4 * j + 3] = d3[j];
    }
}

static void add_to(long n, float *restrict dst, const float *restrict src)
{
    for (long j = 0; j < n; j++) dst[j] += src[j];
}

/* offset of plane p = n * C + c in a (C, N, T) block */
#define TILE_ROW(p, C, planes, T) ((((p) % (C)) * ((planes) / (C)) + (p) / (C)) * (T))

int wino_abi_version(void) { return 5; }

/* x planes (H x W) -> v (36, C, N, T) */
int wino_in(const float *restrict x, float *restrict v, long planes, long p0, long p1,
            long C, long H, long W, long th, long tw, int nt)
{
    const long T = th * tw, ps = planes * T, pl = tw + 1, wp = 4 * pl;
    float *buf = malloc(sizeof(float) * (12 * wp + 24 * pl + 36 * tw));
    if (!buf) return 1;
    float *row = buf;                 /* 6 padded input rows, column c' = col + 1 */
    float *vert = buf + 6 * wp;       /* the 6 rows of B^T d (down the columns) */
    float *phase = buf + 12 * wp;     /* phase[(i * 4 + s) * pl + j] = vert_i[4j + s] */
    float *loc = phase + 24 * pl;     /* one tile row of v: loc[p * tw + j] */
    for (long p = p0; p < p1; p++) {
        const float *xp = x + p * H * W;
        for (long ti = 0; ti < th; ti++) {
            for (int j = 0; j < 6; j++) {
                float *r = row + j * wp;
                long src = 4 * ti - 1 + j;
                r[0] = 0.0f;
                if (src >= 0 && src < H) memcpy(r + 1, xp + src * W, sizeof(float) * W);
                else memset(r + 1, 0, sizeof(float) * W);
                memset(r + 1 + W, 0, sizeof(float) * (wp - 1 - W));
            }
            /* down the columns */
            bt6(wp, row, row + wp, row + 2 * wp, row + 3 * wp, row + 4 * wp, row + 5 * wp,
                vert, vert + wp, vert + 2 * wp, vert + 3 * wp, vert + 4 * wp, vert + 5 * wp);
            for (int i = 0; i < 6; i++)
                deinterleave4(pl, vert + i * wp, phase + (i * 4) * pl, phase + (i * 4 + 1) * pl,
                              phase + (i * 4 + 2) * pl, phase + (i * 4 + 3) * pl);
            /* along the rows: tile j reads columns 4j .. 4j+5 = phases 0-3 of j, 0-1 of j+1 */
            for (int i = 0; i < 6; i++) {
                const float *q0 = phase + (i * 4) * pl, *q1 = q0 + pl, *q2 = q1 + pl, *q3 = q2 + pl;
                bt6(tw, q0, q1, q2, q3, q0 + 1, q1 + 1,
                    loc + (0 * 6 + i) * tw, loc + (1 * 6 + i) * tw, loc + (2 * 6 + i) * tw,
                    loc + (3 * 6 + i) * tw, loc + (4 * 6 + i) * tw, loc + (5 * 6 + i) * tw);
            }
            /* the 36 output rows lie planes * T apart: write each as one run */
            float *out = v + TILE_ROW(p, C, planes, T) + ti * tw;
            for (int q = 0; q < 36; q++) put(out + q * ps, loc + q * tw, tw, nt);
        }
    }
    fence(nt);
    free(buf);
    return 0;
}

/* dv (36, C, N, T) -> dx planes (H x W): the transpose of wino_in */
int wino_in_t(const float *restrict dv, float *restrict dx, long planes, long p0, long p1,
              long C, long H, long W, long th, long tw, int nt)
{
    const long T = th * tw, ps = planes * T, pl = tw + 1, wp = 4 * pl;
    float *buf = malloc(sizeof(float) * (14 * wp + 24 * pl + 2 * tw + 36 * tw));
    if (!buf) return 1;
    float *hor = buf;                 /* 6 rows: the row transform's transpose, interleaved */
    float *row = buf + 6 * wp;        /* 6 rows of dx contributions of this tile row */
    float *carry = buf + 12 * wp;     /* rows 4 and 5 of the previous tile row = rows 0, 1 here */
    float *phase = buf + 14 * wp;     /* phase[(i * 4 + s) * pl + j] */
    float *e4 = phase + 24 * pl, *e5 = e4 + tw;
    float *loc = e5 + tw;             /* one tile row of dv: loc[p * tw + j] */
    for (long p = p0; p < p1; p++) {
        float *dxp = dx + p * H * W;
        memset(carry, 0, sizeof(float) * 2 * wp);
        for (long ti = 0; ti < th; ti++) {
            const float *src = dv + TILE_ROW(p, C, planes, T) + ti * tw;
            for (int q = 0; q < 36; q++) memcpy(loc + q * tw, src + q * ps, sizeof(float) * tw);
            /* along the rows (transposed): tile j adds to columns 4j .. 4j+5 */
            for (int i = 0; i < 6; i++) {
                float *q0 = phase + (i * 4) * pl, *q1 = q0 + pl, *q2 = q1 + pl, *q3 = q2 + pl;
                b6(tw, loc + (0 * 6 + i) * tw, loc + (1 * 6 + i) * tw, loc + (2 * 6 + i) * tw,
                   loc + (3 * 6 + i) * tw, loc + (4 * 6 + i) * tw, loc + (5 * 6 + i) * tw,
                   q0, q1, q2, q3, e4, e5);
                q0[tw] = 0.0f; q1[tw] = 0.0f; q2[tw] = 0.0f; q3[tw] = 0.0f;
                add_to(tw, q0 + 1, e4);
                add_to(tw, q1 + 1, e5);
                interleave4(pl, q0, q1, q2, q3, hor + i * wp);
            }
            /* down the columns (transposed) */
            b6(wp, hor, hor + wp, hor + 2 * wp, hor + 3 * wp, hor + 4 * wp, hor + 5 * wp,
               row, row + wp, row + 2 * wp, row + 3 * wp, row + 4 * wp, row + 5 * wp);
            add_to(wp, row, carry);
            add_to(wp, row + wp, carry + wp);
            memcpy(carry, row + 4 * wp, sizeof(float) * 2 * wp);
            for (int j = 0; j < 4; j++) {
                long dst = 4 * ti - 1 + j;
                if (dst >= 0 && dst < H) put(dxp + dst * W, row + j * wp + 1, W, nt);
            }
        }
        for (int j = 0; j < 2; j++) {
            long dst = 4 * th - 1 + j;
            if (dst < H) put(dxp + dst * W, carry + j * wp + 1, W, nt);
        }
    }
    fence(nt);
    free(buf);
    return 0;
}

/* m (36, C, N, T) -> y planes (H x W) = A^T m A + bias[c] (bias may be NULL) */
int wino_out(const float *restrict m, const float *restrict bias, float *restrict y, long planes,
             long p0, long p1, long C, long H, long W, long th, long tw, int nt)
{
    const long T = th * tw, ps = planes * T, wo = 4 * tw;
    float *buf = malloc(sizeof(float) * (16 * tw + 24 * tw + 36 * tw + wo));
    if (!buf) return 1;
    float *ph = buf;                  /* ph[(r * 4 + c) * tw + j]: output (4ti+r, 4j+c) */
    float *cs = ph + 16 * tw;         /* cs[(i * 4 + c) * tw + j]: A^T along the columns */
    float *loc = cs + 24 * tw;        /* one tile row of m: loc[p * tw + j] */
    float *orow = loc + 36 * tw;
    for (long p = p0; p < p1; p++) {
        const float b = bias ? bias[p % C] : 0.0f;
        float *yp = y + p * H * W;
        for (long ti = 0; ti < th; ti++) {
            const float *src = m + TILE_ROW(p, C, planes, T) + ti * tw;
            for (int q = 0; q < 36; q++) memcpy(loc + q * tw, src + q * ps, sizeof(float) * tw);
            for (int i = 0; i < 6; i++)       /* A^T along the columns of transform row i */
                at6(tw, loc + (0 * 6 + i) * tw, loc + (1 * 6 + i) * tw, loc + (2 * 6 + i) * tw,
                    loc + (3 * 6 + i) * tw, loc + (4 * 6 + i) * tw, loc + (5 * 6 + i) * tw, 0.0f,
                    cs + (i * 4) * tw, cs + (i * 4 + 1) * tw, cs + (i * 4 + 2) * tw, cs + (i * 4 + 3) * tw);
            for (int c = 0; c < 4; c++)       /* A^T down the rows, plus the bias */
                at6(tw, cs + (0 * 4 + c) * tw, cs + (1 * 4 + c) * tw, cs + (2 * 4 + c) * tw,
                    cs + (3 * 4 + c) * tw, cs + (4 * 4 + c) * tw, cs + (5 * 4 + c) * tw, b,
                    ph + (0 * 4 + c) * tw, ph + (1 * 4 + c) * tw, ph + (2 * 4 + c) * tw, ph + (3 * 4 + c) * tw);
            for (int r = 0; r < 4; r++) {
                long dst = 4 * ti + r;
                if (dst >= H) break;
                float *o = (W == wo && !nt) ? yp + dst * W : orow;
                interleave4(tw, ph + (r * 4) * tw, ph + (r * 4 + 1) * tw, ph + (r * 4 + 2) * tw,
                            ph + (r * 4 + 3) * tw, o);
                if (o == orow) put(yp + dst * W, orow, W, nt);
            }
        }
    }
    fence(nt);
    free(buf);
    return 0;
}

/* dy planes (H x W) -> dm (36, C, N, T) = A dy A^T per tile: the transpose of wino_out */
int wino_out_t(const float *restrict dy, float *restrict dm, long planes, long p0, long p1,
               long C, long H, long W, long th, long tw, int nt)
{
    const long T = th * tw, ps = planes * T, wo = 4 * tw;
    float *buf = malloc(sizeof(float) * (16 * tw + 24 * tw + 36 * tw + wo));
    if (!buf) return 1;
    float *ph = buf;                  /* ph[(r * 4 + c) * tw + j] = dy(4ti+r, 4j+c) */
    float *ts = ph + 16 * tw;         /* ts[(r * 6 + q) * tw + j]: A along the columns */
    float *loc = ts + 24 * tw;        /* one tile row of dm: loc[p * tw + j] */
    float *irow = loc + 36 * tw;
    for (long p = p0; p < p1; p++) {
        const float *dyp = dy + p * H * W;
        for (long ti = 0; ti < th; ti++) {
            for (int r = 0; r < 4; r++) {
                long src = 4 * ti + r;
                const float *s;
                if (src < H && W == wo) {
                    s = dyp + src * W;
                } else {
                    long have = src < H ? W : 0;
                    if (have) memcpy(irow, dyp + src * W, sizeof(float) * W);
                    memset(irow + have, 0, sizeof(float) * (wo - have));
                    s = irow;
                }
                deinterleave4(tw, s, ph + (r * 4) * tw, ph + (r * 4 + 1) * tw, ph + (r * 4 + 2) * tw,
                              ph + (r * 4 + 3) * tw);
            }
            for (int r = 0; r < 4; r++)       /* A along the columns: ts[r][q] */
                a4(tw, ph + (r * 4) * tw, ph + (r * 4 + 1) * tw, ph + (r * 4 + 2) * tw, ph + (r * 4 + 3) * tw,
                   ts + (r * 6) * tw, ts + (r * 6 + 1) * tw, ts + (r * 6 + 2) * tw, ts + (r * 6 + 3) * tw,
                   ts + (r * 6 + 4) * tw, ts + (r * 6 + 5) * tw);
            for (int q = 0; q < 6; q++)       /* A down the rows: dm[q * 6 + i] */
                a4(tw, ts + (0 * 6 + q) * tw, ts + (1 * 6 + q) * tw, ts + (2 * 6 + q) * tw, ts + (3 * 6 + q) * tw,
                   loc + (q * 6) * tw, loc + (q * 6 + 1) * tw, loc + (q * 6 + 2) * tw, loc + (q * 6 + 3) * tw,
                   loc + (q * 6 + 4) * tw, loc + (q * 6 + 5) * tw);
            float *out = dm + TILE_ROW(p, C, planes, T) + ti * tw;
            for (int q = 0; q < 36; q++) put(out + q * ps, loc + q * tw, tw, nt);
        }
    }
    fence(nt);
    free(buf);
    return 0;
}

/* ------------------------------------------------------------------------------------
 * Few-output-channel correlation (not Winograd; it shares this library's build and cache):
 *
 *   out[n, c, y, x] = sum_{o, a, b} w[o, a, b, c] * g[n, o, y + a - pad, x + b - pad]
 *
 * g (N, O, H, W), zero outside; w (O, k, k, C), C <= 8; out (N, C, Ho, Wo) with
 * Ho = H + 2 pad - k + 1, Wo = W + 2 pad - k + 1; output rows [r0, r1) of the N * Ho.
 * This is the input gradient of a stride-1 convolution with C input channels (w = the
 * flipped, transposed weight, pad = k - 1 - the convolution's padding), the direction in
 * which oneDNN's kernels, vectorised over channels, leave most of an AVX-512 register
 * empty. Here the 16 lanes run along the row: 2 x C accumulators of 16 pixels, each input
 * row segment loaded once per (o, a, b) and used for C fused multiply-adds.  Input rows
 * are copied, zero-padded, into a per-call row buffer, so the inner loop has no edge
 * cases.  AVX-512 only (corr_available() says whether this build has it).
 */
#if defined(__AVX512F__)
#define CORR_LANES 32   /* pixels per block: two 16-float registers */

#define CORR_KERNEL(CN)                                                                      \
static void corr_block_##CN(const float *restrict rows, const float *restrict w, long O,    \
                            long k, long wp, long x0, float *restrict acc_out)               \
{                                                                                            \
    __m512 acc[CN][2];                                                                       \
    for (int c = 0; c < CN; c++) { acc[c][0] = _mm512_setzero_ps(); acc[c][1] = _mm512_setzero_ps(); } \
    for (long o = 0; o < O; o++) {                                                           \
        for (long a = 0; a < k; a++) {                                                       \
            const float *row = rows + (o * k + a) * wp + x0;                                 \
            const float *wr = w + (o * k + a) * k * CN;                                      \
            for (long b = 0; b < k; b++) {                                                   \
                __m512 v0 = _mm512_loadu_ps(row + b), v1 = _mm512_loadu_ps(row + b + 16);    \
                for (int c = 0; c < CN; c++) {                                               \
                    __m512 s = _mm512_set1_ps(wr[b * CN + c]);                               \
                    acc[c][0] = _mm512_fmadd_ps(s, v0, acc[c][0]);                           \
                    acc[c][1] = _mm512_fmadd_ps(s, v1, acc[c][1]);                           \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
    for (int c = 0; c < CN; c++) {                                                           \
        _mm512_storeu_ps(acc_out + c * CORR_LANES, acc[c][0]);                               \
        _mm512_storeu_ps(acc_out + c * CORR_LANES + 16, acc[c][1]);                          \
    }                                                                                        \
}
CORR_KERNEL(1) CORR_KERNEL(2) CORR_KERNEL(3) CORR_KERNEL(4)
CORR_KERNEL(5) CORR_KERNEL(6) CORR_KERNEL(7) CORR_KERNEL(8)

typedef void (*corr_block_fn)(const float *restrict, const float *restrict, long, long, long,
                              long, float *restrict);
static const corr_block_fn corr_blocks[9] = {
    0, corr_block_1, corr_block_2, corr_block_3, corr_block_4,
    corr_block_5, corr_block_6, corr_block_7, corr_block_8};

int corr_available(void) { return 1; }

int corr_few(const float *restrict g, const float *restrict w, float *restrict out,
             long units, long r0, long r1, long C, long O, long H, long W, long k, long pad)
{
    (void)units;
    if (C < 1 || C > 8) return 2;
    long Ho = H + 2 * pad - k + 1, Wo = W + 2 * pad - k + 1;
    long blocks = (Wo + CORR_LANES - 1) / CORR_LANES;
    long wp = blocks * CORR_LANES + k;             /* row buffer: every block reads in bounds */
    float *rows = calloc((size_t)(O * k * wp), sizeof(float));
    float acc[8 * CORR_LANES];
    if (!rows) return 1;
    corr_block_fn block = corr_blocks[C];
    for (long r = r0; r < r1; r++) {
        long n = r / Ho, y = r % Ho;
        for (long o = 0; o < O; o++) {
            for (long a = 0; a < k; a++) {
                float *dst = rows + (o * k + a) * wp;
                long sy = y + a - pad;
                if (sy < 0 || sy >= H) {
                    memset(dst, 0, (size_t)wp * sizeof(float));
                } else {      /* the pad columns and the tail stay zero from calloc */
                    memcpy(dst + pad, g + ((n * O + o) * H + sy) * W, (size_t)W * sizeof(float));
                }
            }
        }
        for (long bx = 0; bx < blocks; bx++) {
            long x0 = bx * CORR_LANES, nx = Wo - x0 < CORR_LANES ? Wo - x0 : CORR_LANES;
            block(rows, w, O, k, wp, x0, acc);
            for (long c = 0; c < C; c++)
                memcpy(out + ((n * C + c) * Ho + y) * Wo + x0, acc + c * CORR_LANES,
                       (size_t)nx * sizeof(float));
        }
    }
    free(rows);
    return 0;
}
#else
int corr_available(void) { return 0; }

int corr_few(const float *restrict g, const float *restrict w, float *restrict out,
             long units, long r0, long r1, long C, long O, long H, long W, long k, long pad)
{
    (void)g; (void)w; (void)out; (void)units; (void)r0; (void)r1;
    (void)C; (void)O; (void)H; (void)W; (void)k; (void)pad;
    return 2;
}
#endif
