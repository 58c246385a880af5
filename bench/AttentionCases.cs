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
                var fwd = Timing.MedianMsInterleaved([
                    () => Step(() => Kernel.Attention(q, k, v, causal: true, backend: KernelBackend.Native).Z),
                    () => Step(() => nn.functional.scaled_dot_product_attention(q, k, v, is_casual: true)),
                    () => Step(() => Naive(q, k, v, false, out _)),
                    peak.Step,
                ]);
                double peakGflops = GemmPeak.Gflops(fwd[3]);
                Console.WriteLine($"  attention fwd {shape}: {flops / fwd[0] / 1e6:F1} GFLOP/s (useful causal FLOPs), sdpa {flops / fwd[1] / 1e6:F1}, GEMM peak {peakGflops:F1}");
                yield return new BenchResult($"attn fwd causal {shape}", fwd[0], "sdpa", fwd[1]);
                yield return new BenchResult($"attn fwd causal {shape}", fwd[0], "naive", fwd[2]);
                yield return ShareOfPeak($"attn fwd causal {shape}", fwd[0], flops, peakGflops);

                // z and the pattern from each, the outputs naive attention delivers; with the scores too, ours writes a
                // second [b, h, t, t] tensor that naive does not.
                var pat = Timing.MedianMsInterleaved([
                    () => Step(() => Kernel.Attention(q, k, v, causal: true, returnPattern: true, backend: KernelBackend.Native, returnScores: false).Pattern!),
                    () => Step(() => { Naive(q, k, v, true, out var p); return p!; }),
                    () => Step(() => Kernel.Attention(q, k, v, causal: true, returnPattern: true, backend: KernelBackend.Native).Pattern!),
                ]);
                yield return new BenchResult($"attn fwd+pattern {shape}", pat[0], "naive", pat[1]);
                yield return new BenchResult($"attn fwd+pattern+scores {shape}", pat[2], "naive", pat[1]);
            }

            var w = randn(b, h, t, d);
            var fb = Timing.MedianMsInterleaved([
                () => Step(() => FwdBwd(q, k, v, w, (qq, kk, vv) => Kernel.Attention(qq, kk, vv, causal: true, backend: KernelBackend.Native).Z)),
                () => Step(() => FwdBwd(q, k, v, w, (qq, kk, vv) => nn.functional.scaled_dot_product_attention(qq, kk, vv, is_casual: true))),
                peak.Step,
            ]);
            double fbPeak = GemmPeak.Gflops(fb[2]);
            Console.WriteLine($"  attention fwd+bwd {shape}: {3.5 * flops / fb[0] / 1e6:F1} GFLOP/s (fwd + 2.5x for bwd), sdpa {3.5 * flops / fb[1] / 1e6:F1}, GEMM peak {fbPeak:F1}");
            yield return new BenchResult($"attn fwd+bwd causal {shape}", fb[0], "sdpa", fb[1]);
            yield return ShareOfPeak($"attn fwd+bwd causal {shape}", fb[0], 3.5 * flops, fbPeak);
        }
    }

    /// <summary>
    /// The kernel's FLOP rate as a share of the GEMM peak timed in the same rounds: ours is the kernel's time,
    /// the baseline the time its FLOPs would take at the peak, so the speedup column is the share.
    /// </summary>
    private static BenchResult ShareOfPeak(string name, double ms, double flops, double peakGflops) =>
        new($"{name}: share of GEMM peak", ms, "its FLOPs at peak", flops / (peakGflops * 1e6));

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
