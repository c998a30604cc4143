// Losses, each a mean over its terms, computed by one block of 256 threads so that the
// reduction order is fixed: softmax cross-entropy over class scores, and binary
// cross-entropy with logits of every class expert's (False, True) pair.
#include "common.cuh"

// log(1 + e^z) without overflow.
__device__ __forceinline__ double softplus(double z) { return fmax(z, 0.0) + log1p(exp(-fabs(z))); }

// loss[0] = mean_b -log softmax(logits_b)[labels_b]; probs = softmax(logits), kept for backward.
extern "C" __global__ void softmax_ce_fwd_f32(float* __restrict__ loss, float* __restrict__ probs,
                                              const float* __restrict__ logits,
                                              const unsigned* __restrict__ labels, int rows, int k) {
    __shared__ double scratch[32];
    double total = 0.0;
    for (int r = threadIdx.x; r < rows; r += blockDim.x) {
        const float* l = logits + r * k;
        float mx = l[0];
        for (int j = 1; j < k; ++j) mx = fmaxf(mx, l[j]);
        double sum = 0.0;
        for (int j = 0; j < k; ++j) sum += exp((double)l[j] - mx);
        for (int j = 0; j < k; ++j) probs[r * k + j] = (float)(exp((double)l[j] - mx) / sum);
        total += -((double)l[labels[r]] - mx - log(sum));
    }
    total = block_sum(total, scratch);
    if (threadIdx.x == 0) loss[0] = (float)(total / rows);
}

// dlogits = (probs - onehot) * dloss / rows.
extern "C" __global__ void softmax_ce_bwd_f32(float* __restrict__ dlogits, const float* __restrict__ probs,
                                              const unsigned* __restrict__ labels,
                                              const float* __restrict__ dloss, int rows, int k) {
    const float scale = dloss[0] / (float)rows;
    const int n = rows * k;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const int r = i / k, j = i % k;
        dlogits[i] = (probs[i] - (labels[r] == (unsigned)j ? 1.0f : 0.0f)) * scale;
    }
}

// logits [rows, experts, 2]; loss[0] = mean over (b, n) of softplus(z) - t * z, z = l_True - l_False.
extern "C" __global__ void expert_bce_fwd_f32(float* __restrict__ loss, const float* __restrict__ logits,
                                              const unsigned* __restrict__ labels, int rows, int experts) {
    __shared__ double scratch[32];
    double total = 0.0;
    const int n = rows * experts;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const double z = (double)logits[2 * i + 1] - (double)logits[2 * i];
        const double t = labels[i / experts] == (unsigned)(i % experts) ? 1.0 : 0.0;
        total += softplus(z) - t * z;
    }
    total = block_sum(total, scratch);
    if (threadIdx.x == 0) loss[0] = (float)(total / n);
}

extern "C" __global__ void expert_bce_bwd_f32(float* __restrict__ dlogits, const float* __restrict__ logits,
                                              const unsigned* __restrict__ labels,
                                              const float* __restrict__ dloss, int rows, int experts) {
    const int n = rows * experts;
    const double scale = (double)dloss[0] / n;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const double z = (double)logits[2 * i + 1] - (double)logits[2 * i];
        const double t = labels[i / experts] == (unsigned)(i % experts) ? 1.0 : 0.0;
        const double dz = (1.0 / (1.0 + exp(-z)) - t) * scale;
        dlogits[2 * i + 1] = (float)dz;
        dlogits[2 * i] = (float)-dz;
    }
}

// The indices of the four largest of k scores, largest first, ties to the lower index (fewer
// than four when k < 4: the rest stay -1).
__device__ __forceinline__ void top4(const float* s, int k, int top[4]) {
    for (int j = 0; j < 4; ++j) top[j] = -1;
    for (int i = 0; i < k; ++i) {
        int j = 4;
        while (j > 0 && (top[j - 1] < 0 || s[i] > s[top[j - 1]])) --j;
        if (j < 4) {
            for (int m = 3; m > j; --m) top[m] = top[m - 1];
            top[j] = i;
        }
    }
}

// Difference-of-logits-ratio loss (Croce & Hein 2020), one row per thread: untargeted
// -(s_y - max_{i!=y} s_i) / (s_pi1 - s_pi3 + 1e-12), targeted at t
// -(s_y - s_t) / (s_pi1 - (s_pi3 + s_pi4) / 2 + 1e-12), pi sorting the scores in decreasing
// order. loss[0] is the mean; dscores gets each row's own gradient (scaled in backward).
extern "C" __global__ void dlr_fwd_f32(float* __restrict__ loss, float* __restrict__ dscores,
                                       const float* __restrict__ scores, const unsigned* __restrict__ labels,
                                       const unsigned* __restrict__ targets, int targeted, int rows, int k) {
    __shared__ double scratch[32];
    double total = 0.0;
    for (int r = threadIdx.x; r < rows; r += blockDim.x) {
        const float* s = scores + (size_t)r * k;
        int top[4];
        top4(s, k, top);
        const int y = (int)labels[r];
        int other;
        double den;
        if (targeted) {
            other = (int)targets[r];
            den = (double)s[top[0]] - 0.5 * ((double)s[top[2]] + (double)s[top[3]]) + 1e-12;
        } else {
            other = top[0] == y ? top[1] : top[0];
            den = (double)s[top[0]] - (double)s[top[2]] + 1e-12;
        }
        const double num = (double)s[y] - (double)s[other];
        total += -num / den;
        const double q = num / (den * den);
        for (int j = 0; j < k; ++j) {
            double c = 0.0;
            if (j == y) c -= 1.0 / den;
            if (j == other) c += 1.0 / den;
            if (j == top[0]) c += q;
            if (j == top[2]) c -= targeted ? 0.5 * q : q;
            if (targeted && j == top[3]) c -= 0.5 * q;
            dscores[(size_t)r * k + j] = (float)c;
        }
    }
    total = block_sum(total, scratch);
    if (threadIdx.x == 0) loss[0] = (float)(total / rows);
}

// KL divergence of softmax(q) from softmax(p), the mean over rows of
// sum_j P_j (log P_j - log Q_j), one row per thread. dp and dq get each row's own gradient
// (scaled in backward): P_j ((log P_j - log Q_j) - KL_row) and Q_j - P_j.
extern "C" __global__ void kl_div_fwd_f32(float* __restrict__ loss, float* __restrict__ dp,
                                          float* __restrict__ dq, const float* __restrict__ p,
                                          const float* __restrict__ q, int rows, int k) {
    __shared__ double scratch[32];
    double total = 0.0;
    for (int r = threadIdx.x; r < rows; r += blockDim.x) {
        const float* pr = p + (size_t)r * k;
        const float* qr = q + (size_t)r * k;
        float pmax = pr[0], qmax = qr[0];
        for (int j = 1; j < k; ++j) {
            pmax = fmaxf(pmax, pr[j]);
            qmax = fmaxf(qmax, qr[j]);
        }
        double psum = 0.0, qsum = 0.0;
        for (int j = 0; j < k; ++j) {
            psum += exp((double)pr[j] - pmax);
            qsum += exp((double)qr[j] - qmax);
        }
        const double plog = log(psum), qlog = log(qsum);
        double kl = 0.0;
        for (int j = 0; j < k; ++j) {
            const double lp = (double)pr[j] - pmax - plog, lq = (double)qr[j] - qmax - qlog;
            kl += exp(lp) * (lp - lq);
        }
        for (int j = 0; j < k; ++j) {
            const double lp = (double)pr[j] - pmax - plog, lq = (double)qr[j] - qmax - qlog;
            dp[(size_t)r * k + j] = (float)(exp(lp) * ((lp - lq) - kl));
            dq[(size_t)r * k + j] = (float)(exp(lq) - exp(lp));
        }
        total += kl;
    }
    total = block_sum(total, scratch);
    if (threadIdx.x == 0) loss[0] = (float)(total / rows);
}

// dx = per-row gradient * dloss / rows: the backward pass of the losses above.
extern "C" __global__ void loss_grad_scale_f32(float* __restrict__ dx, const float* __restrict__ per_row,
                                               const float* __restrict__ dloss, int rows, int n) {
    const float scale = dloss[0] / (float)rows;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        dx[i] = per_row[i] * scale;
}

// AugMix's Jensen-Shannon consistency loss (src/ops/loss.rs jsd_group): rows r, B + r, ...,
// (V - 1) B + r of `scores` [V B, K] are V views of image r; loss = mean over r of
// (1/V) sum_v KL(p_v || M), M = max(mean_v p_v, 1e-7), and grad [V B, K] its per-group gradient.
// One block, any blockDim.x that is a multiple of 32, a thread per group at a time.
#define JSD_MAX_VIEWS 4
#define JSD_MIXTURE_FLOOR 1e-7

// Column j of group r: log M_j (M the views' mean probability, floored) and 1 where the floor
// clamped it (no gradient through M there), given each view's log-sum-exp `shift`.
__device__ __forceinline__ void jsd_mixture(const float* scores, int rows, int k, int views, int r, int j,
                                            const double* shift, double* log_mixture, double* clamped) {
    double mean = 0.0;
    for (int v = 0; v < views; ++v) mean += exp((double)scores[((size_t)v * rows + r) * k + j] - shift[v]);
    mean /= views;
    *log_mixture = log(mean > JSD_MIXTURE_FLOOR ? mean : JSD_MIXTURE_FLOOR);
    *clamped = mean >= JSD_MIXTURE_FLOOR ? 0.0 : 1.0;
}

extern "C" __global__ void jsd_fwd_f32(float* __restrict__ loss, float* __restrict__ grad,
                                       const float* __restrict__ scores, int rows, int k, int views) {
    __shared__ double scratch[32];
    const double inv_views = 1.0 / views;
    double total = 0.0;
    for (int r = threadIdx.x; r < rows; r += blockDim.x) {
        double shift[JSD_MAX_VIEWS];  // max + log sum exp: log p = s - shift
        for (int v = 0; v < views; ++v) {
            const float* s = scores + ((size_t)v * rows + r) * k;
            float max = s[0];
            for (int j = 1; j < k; ++j) max = fmaxf(max, s[j]);
            double sum = 0.0;
            for (int j = 0; j < k; ++j) sum += exp((double)s[j] - max);
            shift[v] = (double)max + log(sum);
        }
        // The loss, and per view the dot product of p with d/dp.
        double dot[JSD_MAX_VIEWS] = {0.0, 0.0, 0.0, 0.0};
        for (int j = 0; j < k; ++j) {
            double log_mixture, clamped;
            jsd_mixture(scores, rows, k, views, r, j, shift, &log_mixture, &clamped);
            for (int v = 0; v < views; ++v) {
                const double lp = (double)scores[((size_t)v * rows + r) * k + j] - shift[v];
                total += exp(lp) * (lp - log_mixture) * inv_views;
                dot[v] += exp(lp) * (lp - log_mixture + clamped) * inv_views;
            }
        }
        for (int j = 0; j < k; ++j) {
            double log_mixture, clamped;
            jsd_mixture(scores, rows, k, views, r, j, shift, &log_mixture, &clamped);
            for (int v = 0; v < views; ++v) {
                const size_t at = ((size_t)v * rows + r) * k + j;
                const double lp = (double)scores[at] - shift[v];
                grad[at] = (float)(exp(lp) * ((lp - log_mixture + clamped) * inv_views - dot[v]));
            }
        }
    }
    total = block_sum(total, scratch);
    if (threadIdx.x == 0) loss[0] = (float)(total / rows);
}

// *count = the number of rows of scores [b, k] whose largest score is at their label, the
// largest as the host's argmax finds it (the first value strictly greater than all before it, so
// ties go to the lowest index and a NaN never wins). One block of 256 threads; the count is read
// back with the rest of a training step's checks.
extern "C" __global__ void count_correct_f32(unsigned* __restrict__ count, const float* __restrict__ scores,
                                             const unsigned* __restrict__ labels, int b, int k) {
    __shared__ double scratch[32];
    double correct = 0.0;
    for (int n = threadIdx.x; n < b; n += blockDim.x) {
        const float* row = scores + (long long)n * k;
        int best = 0;
        for (int c = 1; c < k; ++c)
            if (row[c] > row[best]) best = c;
        if ((unsigned)best == labels[n]) correct += 1.0;
    }
    correct = block_sum(correct, scratch);
    if (threadIdx.x == 0) *count = (unsigned)correct;
}
