// edgeformer's ops in OpenCL C 1.2: each kernel mirrors one numpy reference in
// edgeformer/kernels/ (same operations in the same order, float32, no contraction into
// fma) so its output stays within the op's max_nmse bound, and NaN/Inf reach exactly the
// outputs the reference's reach. The host side (__init__.py) moves arrays in and out.
//
// Build-time constants (-D): LS, the work-group size of the row kernels (a power of two).

#pragma OPENCL FP_CONTRACT OFF

#if defined(cl_khr_fp64)
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#define HAVE_FP64 1
#endif

// ------------------------------------------------------------------ linear
// y[t, n] = sum_k x[t, k] * w[n, k] (+ b[n]), W dequantized element by element exactly
// as edgeformer.quant.dequantize does it (one float32 product per element), accumulated
// in float32 in k order. One work-item per (n, t): the same arithmetic for a row whatever
// the row count. Weight planes (repacked at prepare_weight from the GGUF blocks):
//   F16   w     ushort (N, K)       half bits
//   Q8_0  qs    char   (N, K)       d ushort (N, K/32) half bits; w = q * d
//   Q4_0  qs    uchar  (N, K/2)     d ushort (N, K/32); per block of 32 the 16 bytes hold
//                                   elements j (low nibble) and j + 16 (high); w = d * (q - 8)

__kernel void linear_f16(__global const float *x, __global const ushort *w,
                         __global const float *bias, const int has_bias,
                         __global float *y, const int N, const int K) {
    const int n = get_global_id(0), t = get_global_id(1);
    if (n >= N) return;
    const __global float *xr = x + (size_t)t * K;
    const __global half *wr = (const __global half *)(w + (size_t)n * K);
    float acc = 0.0f;
    int k = 0;
    for (; k + 8 <= K; k += 8) {                    // 8 halves per load, added in k order
        const float8 wv = vload_half8(0, wr + k);
        acc += xr[k] * wv.s0; acc += xr[k + 1] * wv.s1; acc += xr[k + 2] * wv.s2; acc += xr[k + 3] * wv.s3;
        acc += xr[k + 4] * wv.s4; acc += xr[k + 5] * wv.s5; acc += xr[k + 6] * wv.s6; acc += xr[k + 7] * wv.s7;
    }
    for (; k < K; ++k)
        acc += xr[k] * vload_half(k, wr);
    if (has_bias) acc += bias[n];
    y[(size_t)t * N + n] = acc;
}

__kernel void linear_q8_0(__global const float *x, __global const char *qs, __global const ushort *d,
                          __global const float *bias, const int has_bias,
                          __global float *y, const int N, const int K) {
    const int n = get_global_id(0), t = get_global_id(1);
    if (n >= N) return;
    const int nb = K / 32;
    const __global float *xr = x + (size_t)t * K;
    const __global char *qr = qs + (size_t)n * K;
    const __global half *dr = (const __global half *)(d + (size_t)n * nb);
    float acc = 0.0f;
    for (int b = 0; b < nb; ++b) {
        const float db = vload_half(b, dr);
        for (int j = 0; j < 32; ++j)
            acc += xr[b * 32 + j] * ((float)qr[b * 32 + j] * db);
    }
    if (has_bias) acc += bias[n];
    y[(size_t)t * N + n] = acc;
}

__kernel void linear_q4_0(__global const float *x, __global const uchar *qs, __global const ushort *d,
                          __global const float *bias, const int has_bias,
                          __global float *y, const int N, const int K) {
    const int n = get_global_id(0), t = get_global_id(1);
    if (n >= N) return;
    const int nb = K / 32;
    const __global float *xr = x + (size_t)t * K;
    const __global uchar *qr = qs + (size_t)n * (K / 2);
    const __global half *dr = (const __global half *)(d + (size_t)n * nb);
    float acc = 0.0f;
    for (int b = 0; b < nb; ++b) {
        const float db = vload_half(b, dr);
        const __global uchar *qb = qr + b * 16;
        const __global float *xb = xr + b * 32;
        for (int j = 0; j < 16; ++j)
            acc += xb[j] * (db * (float)((int)(qb[j] & 0x0F) - 8));
        for (int j = 0; j < 16; ++j)
            acc += xb[16 + j] * (db * (float)((int)(qb[j] >> 4) - 8));
    }
    if (has_bias) acc += bias[n];
    y[(size_t)t * N + n] = acc;
}

// ------------------------------------------------------------------ reductions
// Work-group tree reductions over local memory (LS entries); every work-item gets the result.

static float wg_sum(__local float *buf, float v) {
    const int l = get_local_id(0);
    buf[l] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = LS / 2; s > 0; s >>= 1) {
        if (l < s) buf[l] = buf[l] + buf[l + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float r = buf[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

// max that propagates NaN (numpy's max does; OpenCL's fmax drops it)
static float nan_max(float a, float b) {
    return (isnan(a) || isnan(b)) ? NAN : fmax(a, b);
}

static float wg_max(__local float *buf, float v) {
    const int l = get_local_id(0);
    buf[l] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = LS / 2; s > 0; s >>= 1) {
        if (l < s) buf[l] = nan_max(buf[l], buf[l + s]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float r = buf[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

// ------------------------------------------------------------------ rms_norm
// kernels/norm.py rms_norm_ref: y = x / sqrt(mean(x^2) + eps) * w, one work-group per row.

__kernel void rms_norm(__global const float *x, __global const float *w, const int has_w,
                       __global float *y, const int D, const float eps) {
    __local float buf[LS];
    const size_t row = get_group_id(0);
    const int l = get_local_id(0);
    const __global float *xr = x + row * D;
    float s = 0.0f;
    for (int i = l; i < D; i += LS) s += xr[i] * xr[i];
    const float ms = wg_sum(buf, s) / (float)D;
    const float den = sqrt(ms + eps);
    for (int i = l; i < D; i += LS) {
        const float v = xr[i] / den;
        y[row * D + i] = has_w ? v * w[i] : v;
    }
}

// ------------------------------------------------------------------ rope
// kernels/rope.py rope_ref: x (T, H, D); the first R = 2 * half dims rotate by
// pos * inv_freq[i] (cos/sin times mscale); neox pairs (i, i + half), else (2i, 2i + 1);
// dims past R pass through. One work-item per (i < D/2-ish slot, h, t): global (D, H, T).

__kernel void rope(__global const float *x, __global const float *pos, __global const float *inv_freq,
                   __global float *y, const int H, const int D, const int half_r, const int neox,
                   const float mscale) {
    const int i = get_global_id(0), h = get_global_id(1), t = get_global_id(2);
    if (i >= D) return;
    const size_t base = ((size_t)t * H + h) * D;
    const int r = 2 * half_r;
    if (i >= r) { y[base + i] = x[base + i]; return; }
    if (i >= half_r) return;                        // one work-item per pair: i < half_r
    const float ang = pos[t] * inv_freq[i];
    const float c = cos(ang) * mscale, s = sin(ang) * mscale;
    const int i1 = neox ? i : 2 * i, i2 = neox ? i + half_r : 2 * i + 1;
    const float x1 = x[base + i1], x2 = x[base + i2];
    y[base + i1] = x1 * c - x2 * s;
    y[base + i2] = x2 * c + x1 * s;
}

// ------------------------------------------------------------------ activation, glu
// kernels/activation.py activation_ref: 0 silu, 1 gelu (exact, erf; float64 where the
// device has it, as the reference), 2 gelu_tanh, 3 relu (NaN stays NaN).

static float act(const float x, const int kind) {
    if (kind == 0) return x / (1.0f + exp(-x));
    if (kind == 1) {
#ifdef HAVE_FP64
        const double xd = (double)x;
        return (float)(0.5 * xd * erfc(-xd / M_SQRT2));
#else
        return 0.5f * x * erfc(-x * M_SQRT1_2_F);
#endif
    }
    if (kind == 2) {
        const float z = 0.7978845608028654f * (x + 0.044715f * x * x * x);
        return x / (1.0f + exp(-2.0f * z));
    }
    return x < 0.0f ? 0.0f : x;                     // NaN < 0 is false: NaN passes
}

__kernel void activation(__global const float *x, __global float *y, const int kind, const int n) {
    const int i = get_global_id(0);
    if (i < n) y[i] = act(x[i], kind);
}

__kernel void glu(__global const float *g, __global const float *u, __global float *y, const int kind,
                  const int n) {
    const int i = get_global_id(0);
    if (i < n) y[i] = act(g[i], kind) * u[i];
}

// ------------------------------------------------------------------ attention
// kernels/attention.py attention_ref: q (T, Hq, D), k (S, Hkv, D), v (S, Hkv, Dv); query
// head h reads kv head h / (Hq / Hkv). Key j is visible to query i iff (!causal or
// kp[j] <= qp[i]) and (window < 0 or qp[i] - kp[j] < window). Two kernels:
//   attn_scores: sc[t, h, j] = scale * q.k (softcap: cap * tanh(s / cap)) for visible keys;
//   attn_softmax_pv: one work-group per (h, t): max (NaN-propagating; a non-finite max
//     becomes 0, as the reference's), p = exp(s - m), p / sum (sum 0 -> 1), out = sum p v
//     over the visible keys only (a masked key's NaN never enters).

static int visible(const long qp, const long kp, const int causal, const long window) {
    const long diff = qp - kp;
    return (!causal || diff >= 0) && (window < 0 || diff < window);
}

__kernel void attn_scores(__global const float *q, __global const float *k, __global const long *qpos,
                          __global const long *kpos, __global float *sc, const int S,
                          const int Hq, const int Hkv, const int D, const float scale, const int causal,
                          const long window, const float softcap) {
    const int j = get_global_id(0), h = get_global_id(1), t = get_global_id(2);
    if (j >= S) return;
    const size_t o = ((size_t)t * Hq + h) * S + j;
    if (!visible(qpos[t], kpos[j], causal, window)) { sc[o] = 0.0f; return; }
    const int kh = h / (Hq / Hkv);
    const __global float *qr = q + ((size_t)t * Hq + h) * D;
    const __global float *kr = k + ((size_t)j * Hkv + kh) * D;
    float acc = 0.0f;
    for (int d = 0; d < D; ++d) acc += qr[d] * kr[d];
    float s = acc * scale;
    if (softcap > 0.0f) s = tanh(s / softcap) * softcap;
    sc[o] = s;
}

__kernel void attn_softmax_pv(__global float *sc, __global const float *v, __global const long *qpos,
                              __global const long *kpos, __global float *out, const int S, const int Hq,
                              const int Hkv, const int Dv, const int causal, const long window) {
    __local float buf[LS];
    const int h = get_group_id(0), t = get_group_id(1), l = get_local_id(0);
    const long qp = qpos[t];
    __global float *row = sc + ((size_t)t * Hq + h) * S;
    float m = -INFINITY;
    for (int j = l; j < S; j += LS)
        if (visible(qp, kpos[j], causal, window)) m = nan_max(m, row[j]);
    m = wg_max(buf, m);
    if (!isfinite(m)) m = 0.0f;
    float s = 0.0f;
    for (int j = l; j < S; j += LS)
        if (visible(qp, kpos[j], causal, window)) {
            const float p = exp(row[j] - m);
            row[j] = p;
            s += p;
        }
    s = wg_sum(buf, s);
    const float den = s > 0.0f ? s : 1.0f;
    for (int j = l; j < S; j += LS)
        if (visible(qp, kpos[j], causal, window)) row[j] = row[j] / den;
    barrier(CLK_GLOBAL_MEM_FENCE);                  // every p of the row written
    const int kh = h / (Hq / Hkv);
    for (int d = l; d < Dv; d += LS) {
        float acc = 0.0f;
        for (int j = 0; j < S; ++j)
            if (visible(qp, kpos[j], causal, window)) acc += row[j] * v[((size_t)j * Hkv + kh) * Dv + d];
        out[((size_t)t * Hq + h) * Dv + d] = acc;
    }
}
