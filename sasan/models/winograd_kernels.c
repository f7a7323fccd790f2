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
 *   v, dv, m, dm: (36, planes, T); transform position p = column * 6 + row
 *
 *   wino_in      v  = B^T d B       for every 6x6 input tile d of x
 *   wino_in_t    dx = sum of B dv B^T over the tiles (overlap-add): transpose of wino_in
 *   wino_out     y  = A^T m A + bias[plane % K]
 *   wino_out_t   dm = A dy A^T: transpose of wino_out (no bias)
 *
 * B^T, A^T: Lavin & Gray 2016, interpolation points 0, 1, -1, 2, -2, infinity.  Every loop
 * over tiles runs on contiguous arrays: rows are de-interleaved into four phase arrays
 * (columns 4j, 4j+1, 4j+2, 4j+3) first, so the compiler can vectorise across tiles.
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

int wino_abi_version(void) { return 2; }

/* x planes (H x W) -> v (36, planes, T) */
int wino_in(const float *restrict x, float *restrict v, long planes, long p0, long p1,
            long H, long W, long th, long tw, int nt)
{
    const long T = th * tw, ps = planes * T, wp = 4 * (tw + 1);
    float *buf = malloc(sizeof(float) * (6 * wp + 24 * (tw + 1) + 36 * tw));
    if (!buf) return 1;
    float *row = buf;                       /* 6 padded input rows, column c' = col + 1 */
    float *ph = buf + 6 * wp;               /* ph[(i * 4 + s) * (tw + 1) + j]           */
    float *loc = ph + 24 * (tw + 1);        /* one tile row of v: loc[p * tw + j]       */
    const long pl = tw + 1;
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
            /* down the columns, de-interleaving column c' = 4j + s into ph[i][s][j] */
            for (long j = 0; j < pl; j++) {
                for (int s = 0; s < 4; s++) {
                    long c = 4 * j + s;
                    float o0, o1, o2, o3, o4, o5;
                    BT6(row[c], row[wp + c], row[2 * wp + c], row[3 * wp + c], row[4 * wp + c],
                        row[5 * wp + c], o0, o1, o2, o3, o4, o5);
                    ph[(0 * 4 + s) * pl + j] = o0;
                    ph[(1 * 4 + s) * pl + j] = o1;
                    ph[(2 * 4 + s) * pl + j] = o2;
                    ph[(3 * 4 + s) * pl + j] = o3;
                    ph[(4 * 4 + s) * pl + j] = o4;
                    ph[(5 * 4 + s) * pl + j] = o5;
                }
            }
            /* along the rows: tile j reads columns 4j .. 4j+5 = phases 0-3 of j, 0-1 of j+1 */
            for (int i = 0; i < 6; i++) {
                const float *q0 = ph + (i * 4 + 0) * pl, *q1 = ph + (i * 4 + 1) * pl;
                const float *q2 = ph + (i * 4 + 2) * pl, *q3 = ph + (i * 4 + 3) * pl;
                float *restrict w0 = loc + (0 * 6 + i) * tw, *restrict w1 = loc + (1 * 6 + i) * tw;
                float *restrict w2 = loc + (2 * 6 + i) * tw, *restrict w3 = loc + (3 * 6 + i) * tw;
                float *restrict w4 = loc + (4 * 6 + i) * tw, *restrict w5 = loc + (5 * 6 + i) * tw;
                for (long j = 0; j < tw; j++) {
                    float o0, o1, o2, o3, o4, o5;
                    BT6(q0[j], q1[j], q2[j], q3[j], q0[j + 1], q1[j + 1], o0, o1, o2, o3, o4, o5);
                    w0[j] = o0; w1[j] = o1; w2[j] = o2; w3[j] = o3; w4[j] = o4; w5[j] = o5;
                }
            }
            /* the 36 output rows lie planes * T apart: write each as one run */
            float *out = v + p * T + ti * tw;
            for (int q = 0; q < 36; q++) put(out + q * ps, loc + q * tw, tw, nt);
        }
    }
    fence(nt);
    free(buf);
    return 0;
}

/* dv (36, planes, T) -> dx planes (H x W): the transpose of wino_in */
int wino_in_t(const float *restrict dv, float *restrict dx, long planes, long p0, long p1,
              long H, long W, long th, long tw, int nt)
{
    const long T = th * tw, ps = planes * T, wp = 4 * (tw + 1), pl = tw + 1;
    float *buf = malloc(sizeof(float) * (8 * wp + 24 * pl + 2 * pl + 36 * tw));
    if (!buf) return 1;
    float *row = buf;                 /* rows 0-5 of the current tile row; 6-7: carried rows */
    float *ph = buf + 8 * wp;
    float *e4 = ph + 24 * pl, *e5 = e4 + pl;
    float *loc = e5 + pl;             /* one tile row of dv: loc[p * tw + j] */
    for (long p = p0; p < p1; p++) {
        float *dxp = dx + p * H * W;
        float *carry4 = row + 6 * wp, *carry5 = row + 7 * wp;
        memset(carry4, 0, sizeof(float) * 2 * wp);
        for (long ti = 0; ti < th; ti++) {
            const float *src = dv + p * T + ti * tw;
            for (int q = 0; q < 36; q++) memcpy(loc + q * tw, src + q * ps, sizeof(float) * tw);
            const float *in = loc;
            /* along the rows (transposed): tile j adds to columns 4j .. 4j+5 */
            for (int i = 0; i < 6; i++) {
                const float *r0 = in + (0 * 6 + i) * tw, *r1 = in + (1 * 6 + i) * tw;
                const float *r2 = in + (2 * 6 + i) * tw, *r3 = in + (3 * 6 + i) * tw;
                const float *r4 = in + (4 * 6 + i) * tw, *r5 = in + (5 * 6 + i) * tw;
                float *q0 = ph + (i * 4 + 0) * pl, *q1 = ph + (i * 4 + 1) * pl;
                float *q2 = ph + (i * 4 + 2) * pl, *q3 = ph + (i * 4 + 3) * pl;
                for (long j = 0; j < tw; j++) {
                    float o0, o1, o2, o3, o4, o5;
                    B6(r0[j], r1[j], r2[j], r3[j], r4[j], r5[j], o0, o1, o2, o3, o4, o5);
                    q0[j] = o0; q1[j] = o1; q2[j] = o2; q3[j] = o3; e4[j] = o4; e5[j] = o5;
                }
                q0[tw] = 0.0f; q1[tw] = 0.0f; q2[tw] = 0.0f; q3[tw] = 0.0f;
                for (long j = 0; j < tw; j++) {
                    q0[j + 1] += e4[j];
                    q1[j + 1] += e5[j];
                }
            }
            /* down the columns (transposed), interleaving the phases back into rows */
            for (long j = 0; j < pl; j++) {
                for (int s = 0; s < 4; s++) {
                    long c = 4 * j + s;
                    float o0, o1, o2, o3, o4, o5;
                    B6(ph[(0 * 4 + s) * pl + j], ph[(1 * 4 + s) * pl + j], ph[(2 * 4 + s) * pl + j],
                       ph[(3 * 4 + s) * pl + j], ph[(4 * 4 + s) * pl + j], ph[(5 * 4 + s) * pl + j],
                       o0, o1, o2, o3, o4, o5);
                    row[c] = o0 + carry4[c];
                    row[wp + c] = o1 + carry5[c];
                    row[2 * wp + c] = o2;
                    row[3 * wp + c] = o3;
                    carry4[c] = o4;
                    carry5[c] = o5;
                }
            }
            for (int j = 0; j < 4; j++) {
                long dst = 4 * ti - 1 + j;
                if (dst >= 0 && dst < H) put(dxp + dst * W, row + j * wp + 1, W, nt);
            }
        }
        for (int j = 0; j < 2; j++) {
            long dst = 4 * th - 1 + j;
            if (dst < H) put(dxp + dst * W, (j ? carry5 : carry4) + 1, W, nt);
        }
    }
    fence(nt);
    free(buf);
    return 0;
}

/* m (36, planes, T) -> y planes (H x W) = A^T m A + bias[p % K] (bias may be NULL) */
int wino_out(const float *restrict m, const float *restrict bias, float *restrict y, long planes,
             long p0, long p1, long K, long H, long W, long th, long tw, int nt)
{
    const long T = th * tw, ps = planes * T, wo = 4 * tw;
    float *buf = malloc(sizeof(float) * (16 * tw + 24 * tw + 36 * tw + wo));
    if (!buf) return 1;
    float *ph = buf;                  /* ph[(r * 4 + c) * tw + j]: output (4ti+r, 4j+c) */
    float *cs = ph + 16 * tw;         /* cs[(i * 4 + c) * tw + j]: A^T along the columns */
    float *loc = cs + 24 * tw;        /* one tile row of m: loc[p * tw + j] */
    float *orow = loc + 36 * tw;
    for (long p = p0; p < p1; p++) {
        const float b = bias ? bias[p % K] : 0.0f;
        float *yp = y + p * H * W;
        for (long ti = 0; ti < th; ti++) {
            const float *src = m + p * T + ti * tw;
            for (int q = 0; q < 36; q++) memcpy(loc + q * tw, src + q * ps, sizeof(float) * tw);
            for (int i = 0; i < 6; i++) {    /* A^T along the columns of transform row i */
                const float *m0 = loc + (0 * 6 + i) * tw, *m1 = loc + (1 * 6 + i) * tw;
                const float *m2 = loc + (2 * 6 + i) * tw, *m3 = loc + (3 * 6 + i) * tw;
                const float *m4 = loc + (4 * 6 + i) * tw, *m5 = loc + (5 * 6 + i) * tw;
                float *restrict c0 = cs + (i * 4 + 0) * tw, *restrict c1 = cs + (i * 4 + 1) * tw;
                float *restrict c2 = cs + (i * 4 + 2) * tw, *restrict c3 = cs + (i * 4 + 3) * tw;
                for (long j = 0; j < tw; j++)
                    AT6(m0[j], m1[j], m2[j], m3[j], m4[j], m5[j], c0[j], c1[j], c2[j], c3[j]);
            }
            for (int c = 0; c < 4; c++) {    /* A^T down the rows, plus the bias */
                const float *d0 = cs + (0 * 4 + c) * tw, *d1 = cs + (1 * 4 + c) * tw;
                const float *d2 = cs + (2 * 4 + c) * tw, *d3 = cs + (3 * 4 + c) * tw;
                const float *d4 = cs + (4 * 4 + c) * tw, *d5 = cs + (5 * 4 + c) * tw;
                float *restrict y0 = ph + (0 * 4 + c) * tw, *restrict y1 = ph + (1 * 4 + c) * tw;
                float *restrict y2 = ph + (2 * 4 + c) * tw, *restrict y3 = ph + (3 * 4 + c) * tw;
                for (long j = 0; j < tw; j++) {
                    float o0, o1, o2, o3;
                    AT6(d0[j], d1[j], d2[j], d3[j], d4[j], d5[j], o0, o1, o2, o3);
                    y0[j] = o0 + b; y1[j] = o1 + b; y2[j] = o2 + b; y3[j] = o3 + b;
                }
            }
            for (int r = 0; r < 4; r++) {
                long dst = 4 * ti + r;
                if (dst >= H) break;
                const float *c0 = ph + (r * 4 + 0) * tw, *c1 = ph + (r * 4 + 1) * tw;
                const float *c2 = ph + (r * 4 + 2) * tw, *c3 = ph + (r * 4 + 3) * tw;
                float *o = (W == wo && !nt) ? yp + dst * W : orow;
                for (long j = 0; j < tw; j++) {
                    o[4 * j] = c0[j]; o[4 * j + 1] = c1[j]; o[4 * j + 2] = c2[j]; o[4 * j + 3] = c3[j];
                }
                if (o == orow) put(yp + dst * W, orow, W, nt);
            }
        }
    }
    fence(nt);
    free(buf);
    return 0;
}

/* dy planes (H x W) -> dm (36, planes, T) = A dy A^T per tile: the transpose of wino_out */
int wino_out_t(const float *restrict dy, float *restrict dm, long planes, long p0, long p1,
               long H, long W, long th, long tw, int nt)
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
                    if (src < H) memcpy(irow, dyp + src * W, sizeof(float) * W);
                    else memset(irow, 0, sizeof(float) * W);
                    memset(irow + (src < H ? W : 0), 0, sizeof(float) * (wo - (src < H ? W : 0)));
                    s = irow;
                }
                float *c0 = ph + (r * 4 + 0) * tw, *c1 = ph + (r * 4 + 1) * tw;
                float *c2 = ph + (r * 4 + 2) * tw, *c3 = ph + (r * 4 + 3) * tw;
                for (long j = 0; j < tw; j++) {
                    c0[j] = s[4 * j]; c1[j] = s[4 * j + 1]; c2[j] = s[4 * j + 2]; c3[j] = s[4 * j + 3];
                }
            }
            for (int r = 0; r < 4; r++) {    /* A along the columns: t[r][q] */
                const float *e0 = ph + (r * 4 + 0) * tw, *e1 = ph + (r * 4 + 1) * tw;
                const float *e2 = ph + (r * 4 + 2) * tw, *e3 = ph + (r * 4 + 3) * tw;
                float *restrict t0 = ts + (r * 6 + 0) * tw, *restrict t1 = ts + (r * 6 + 1) * tw;
                float *restrict t2 = ts + (r * 6 + 2) * tw, *restrict t3 = ts + (r * 6 + 3) * tw;
                float *restrict t4 = ts + (r * 6 + 4) * tw, *restrict t5 = ts + (r * 6 + 5) * tw;
                for (long j = 0; j < tw; j++)
                    A4(e0[j], e1[j], e2[j], e3[j], t0[j], t1[j], t2[j], t3[j], t4[j], t5[j]);
            }
            for (int q = 0; q < 6; q++) {    /* A down the rows: dm[q * 6 + i] */
                const float *f0 = ts + (0 * 6 + q) * tw, *f1 = ts + (1 * 6 + q) * tw;
                const float *f2 = ts + (2 * 6 + q) * tw, *f3 = ts + (3 * 6 + q) * tw;
                float *restrict o0 = loc + (q * 6 + 0) * tw, *restrict o1 = loc + (q * 6 + 1) * tw;
                float *restrict o2 = loc + (q * 6 + 2) * tw, *restrict o3 = loc + (q * 6 + 3) * tw;
                float *restrict o4 = loc + (q * 6 + 4) * tw, *restrict o5 = loc + (q * 6 + 5) * tw;
                for (long j = 0; j < tw; j++)
                    A4(f0[j], f1[j], f2[j], f3[j], o0[j], o1[j], o2[j], o3[j], o4[j], o5[j]);
            }
            float *out = dm + p * T + ti * tw;
            for (int q = 0; q < 36; q++) put(out + q * ps, loc + q * tw, tw, nt);
        }
    }
    fence(nt);
    free(buf);
    return 0;
}
