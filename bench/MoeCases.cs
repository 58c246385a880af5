using MechInterp.Kernels;
using static TorchSharp.torch;

namespace MechInterp.Bench;

/// <summary>Top-2 MoE layer forward+backward: native grouped dispatch vs the per-expert loop and the dense ideal.</summary>
internal static class MoeCases
{
    public static IEnumerable<BenchResult> Run()
    {
        const long n = 4096, d = 128, f = 512, e = 8;
        const int k = 2;
        using var scope = NewDisposeScope();
        manual_seed(3);
        var x = randn(n, d);
        var logits = randn(n, e);
        var wIn = randn(e, d, f).div(Math.Sqrt(d));
        var bIn = zeros(e, f);
        var wOut = randn(e, f, d).div(Math.Sqrt(f));
        var bOut = zeros(e, d);
        var dy = randn(n, d);
        Func<Tensor, Tensor> gelu = t => nn.functional.gelu(t);

        Action Layer(KernelBackend backend) => () => AttentionCases.Step(() =>
        {
            var (xx, ll, wi, bi, wo, bo) = Leaves(x, logits, wIn, bIn, wOut, bOut);
            var route = Kernel.Route(ll.softmax(-1).unsqueeze(0), k, renormalize: true, backend: backend);   // [1, n, k] each
            var y = Kernel.ExpertMlp(xx, route.ExpertIndex.squeeze(0), route.Gates.squeeze(0), wi, bi, wo, bo, gelu, backend);
            y.mul(dy).sum().backward();
            return xx.grad!;
        });
        // The ideal compute: k dense expert MLPs over every token, no routing at all.
        Action denseK = () => AttentionCases.Step(() =>
        {
            var (xx, ll, wi, bi, wo, bo) = Leaves(x, logits, wIn, bIn, wOut, bOut);
            var gates = ll.softmax(-1);                                            // [n, e]
            var y = zeros(n, d);
            for (int s = 0; s < k; s++)
            {
                var hidden = gelu(bi[s].addmm(xx, wi[s]));                         // [n, f]
                y = y.add(bo[s].addmm(hidden, wo[s]).mul(gates.narrow(1, s, 1)));  // [n, d]
            }
            y.mul(dy).sum().backward();
            return xx.grad!;
        });
        var ms = Timing.Interleaved([Layer(KernelBackend.Native), Layer(KernelBackend.Managed), denseK], repetitions: 11);
        double ours = ms.Median(0), dense = ms.Median(2);
        string name = $"moe fwd+bwd N{n} d{d} f{f} E{e} top{k}";
        double flops = 3 * 2.0 * n * k * 2 * d * f;   // two GEMMs per pair, backward twice the forward
        Console.WriteLine($"  {name}: ours {flops / ours / 1e6:F1} GFLOP/s, dense_k {flops / dense / 1e6:F1} GFLOP/s");
        yield return ms.Compare(name, 0, "loop", 1);
        yield return ms.Compare(name, 0, "dense_k", 2);
    }

    private static (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor) Leaves(params Tensor[] t) =>
        (t[0].detach().requires_grad_(), t[1].detach().requires_grad_(), t[2].detach().requires_grad_(),
         t[3].detach().requires_grad_(), t[4].detach().requires_grad_(), t[5].detach().requires_grad_());
}
