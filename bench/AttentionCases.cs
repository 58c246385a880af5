using MechInterp.Kernels;
using TorchSharp;
using static TorchSharp.torch;

namespace MechInterp.Bench;

/// <summary>Causal float32 attention: forward, forward with the pattern, forward+backward, against libtorch.</summary>
internal static class AttentionCases
{
    public static readonly (int B, int H, int T, int D)[] Shapes = [(8, 8, 256, 64), (4, 4, 1024, 64), (16, 4, 128, 32)];

    /// <summary>Useful FLOPs of causal attention: q k^T and p v over the T(T+1)/2 visible pairs.</summary>
    public static double CausalFlops(int b, int h, int t, int d) => 4.0 * b * h * d * t * (t + 1) / 2;

    private static Tensor Naive(Tensor q, Tensor k, Tensor v, bool keepPattern, out Tensor? pattern)
    {
        long t = q.shape[2];
        var scores = q.matmul(k.transpose(-2, -1)).div(Math.Sqrt(q.shape[3]));    // [b, h, t, t]
        using var mask = ones(t, t, dtype: ScalarType.Bool).triu(1);
        var p = scores.masked_fill(mask, float.NegativeInfinity).softmax(-1);      // [b, h, t, t]
        pattern = keepPattern ? p : null;
        return p.matmul(v);                                                         // [b, h, t, d]
    }

    public static IEnumerable<BenchResult> Run()
    {
        using var peak = new GemmPeak();   // one matmul pair for every shape's rounds
        foreach (var (b, h, t, d) in Shapes)
        {
            using var scope = NewDisposeScope();
            manual_seed(1);
            var q = randn(b, h, t, d);
            var k = randn(b, h, t, d);
            var v = randn(b, h, t, d);
            string shape = $"B{b} H{h} T{t} D{d}";
            double flops = CausalFlops(b, h, t, d);

            using (no_grad())
            {
                var fwd = Timing.Interleaved([
                    () => Step(() => Kernel.Attention(q, k, v, causal: true, backend: KernelBackend.Native).Z),
                    () => Step(() => nn.functional.scaled_dot_product_attention(q, k, v, is_casual: true)),
                    () => Step(() => Naive(q, k, v, false, out _)),
                    peak.Step,
                ]);
                Console.WriteLine($"  attention fwd {shape}: {flops / fwd.Median(0) / 1e6:F1} GFLOP/s (useful causal FLOPs), sdpa {flops / fwd.Median(1) / 1e6:F1}, GEMM peak {GemmPeak.Gflops(fwd.Median(3)):F1}");
                yield return fwd.Compare($"attn fwd causal {shape}", 0, "sdpa", 1);
                yield return fwd.Compare($"attn fwd causal {shape}", 0, "naive", 2);
                yield return fwd.ShareOfPeak($"attn fwd causal {shape}", 0, 3, flops);

                // z and the pattern from each, the outputs naive attention delivers; with the scores too, ours writes a
                // second [b, h, t, t] tensor that naive does not.
                var pat = Timing.Interleaved([
                    () => Step(() => Kernel.Attention(q, k, v, causal: true, returnPattern: true, backend: KernelBackend.Native, returnScores: false).Pattern!),
                    () => Step(() => { Naive(q, k, v, true, out var p); return p!; }),
                    () => Step(() => Kernel.Attention(q, k, v, causal: true, returnPattern: true, backend: KernelBackend.Native).Pattern!),
                ]);
                yield return pat.Compare($"attn fwd+pattern {shape}", 0, "naive", 1);
                yield return pat.Compare($"attn fwd+pattern+scores {shape}", 2, "naive", 1);
            }

            var w = randn(b, h, t, d);
            var fb = Timing.Interleaved([
                () => Step(() => FwdBwd(q, k, v, w, (qq, kk, vv) => Kernel.Attention(qq, kk, vv, causal: true, backend: KernelBackend.Native).Z)),
                () => Step(() => FwdBwd(q, k, v, w, (qq, kk, vv) => nn.functional.scaled_dot_product_attention(qq, kk, vv, is_casual: true))),
                peak.Step,
            ]);
            Console.WriteLine($"  attention fwd+bwd {shape}: {3.5 * flops / fb.Median(0) / 1e6:F1} GFLOP/s (fwd + 2.5x for bwd), sdpa {3.5 * flops / fb.Median(1) / 1e6:F1}, GEMM peak {GemmPeak.Gflops(fb.Median(2)):F1}");
            yield return fb.Compare($"attn fwd+bwd causal {shape}", 0, "sdpa", 1);
            yield return fb.ShareOfPeak($"attn fwd+bwd causal {shape}", 0, 2, 3.5 * flops);
        }
    }

    private static Tensor FwdBwd(Tensor q, Tensor k, Tensor v, Tensor w, Func<Tensor, Tensor, Tensor, Tensor> attention)
    {
        var (qq, kk, vv) = (q.detach().requires_grad_(), k.detach().requires_grad_(), v.detach().requires_grad_());
        attention(qq, kk, vv).mul(w).sum().backward();
        return qq.grad!;
    }

    /// <summary>One timed repetition: its temporaries are freed before the next.</summary>
    public static void Step(Func<Tensor> body)
    {
        using var scope = NewDisposeScope();
        body();
    }
}
