using MechInterp.Kernels;
using MechInterp.Native;
using static TorchSharp.torch;

namespace MechInterp.Tests;

/// <summary>Native expert dispatch and routing equal their managed twins and a hand-computed example.</summary>
public class NativeExpertTests
{
    public NativeExpertTests() =>
        Assert.True(NativeKernels.IsAvailable, $"the native library must be built for these tests: {NativeKernels.UnavailableReason}");

    private static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    private static void AssertClose(Tensor expected, Tensor actual, string what, double tol = 1e-5)
    {
        double diff = expected.sub(actual).abs().max().item<float>();
        double scale = Math.Max(1.0, expected.abs().max().item<float>());
        Assert.True(diff <= tol * scale, $"{what}: max |native - managed| = {diff:E3} > {tol * scale:E3}");
    }

    private sealed record Experts(Tensor WIn, Tensor BIn, Tensor WOut, Tensor BOut)
    {
        public static Experts Random(long e, long d, long f) =>
            new(randn(e, d, f).div(Math.Sqrt(d)), randn(e, f).mul(0.1), randn(e, f, d).div(Math.Sqrt(f)), randn(e, d).mul(0.1));

        public Experts Leaves() => new(WIn.clone().requires_grad_(), BIn.clone().requires_grad_(), WOut.clone().requires_grad_(), BOut.clone().requires_grad_());

        public Tensor[] All => [WIn, BIn, WOut, BOut];
    }

    private static Tensor Gelu(Tensor t) => nn.functional.gelu(t);

    /// <summary>One group's routing of router logits [tokens, experts], as [tokens, k] index and gates.</summary>
    private static (Tensor ExpertIndex, Tensor Gates) Routed(Tensor logits, int k, KernelBackend backend)
    {
        var r = Kernel.Route(logits.softmax(-1).unsqueeze(0), k, backend: backend);
        return (r.ExpertIndex.squeeze(0), r.Gates.squeeze(0));
    }

    /// <summary>The hand-computed example: 3 tokens, 4 experts; token 2 ties experts 1 and 2 only at the second choice.</summary>
    private static Tensor HandWeights() => tensor(new float[] { 1, 3, 2, 0, /**/ 0, 0, 5, 1, /**/ 4, 2, 1, 0 }, 1, 3, 4).softmax(-1);   // [1, tokens, experts]

    [Theory]
    [InlineData(false)]   // balanced routing: padded groups, one batched GEMM per layer
    [InlineData(true)]    // skewed routing: packed groups, one GEMM per expert
    public void NativeEqualsManagedForwardAndGradients(bool skewed)
    {
        using var scope = NewDisposeScope();
        manual_seed(21);
        long tokens = 203, d = 24, f = 40, e = 6;
        int k = 2;
        var logits = randn(tokens, e);
        if (skewed) logits = logits.add(tensor(new float[] { 4, 3, 0, 0, 0, 0 }));   // experts 0 and 1 take most pairs
        var route = Routed(logits, k, KernelBackend.Managed);
        var x = randn(tokens, d);
        var w = Experts.Random(e, d, f);
        var dy = randn(tokens, d);

        var (xn, gn, wn) = (x.clone().requires_grad_(), route.Gates.detach().clone().requires_grad_(), w.Leaves());
        var (xm, gm, wm) = (x.clone().requires_grad_(), route.Gates.detach().clone().requires_grad_(), w.Leaves());
        var yn = Kernel.ExpertMlp(xn, route.ExpertIndex, gn, wn.WIn, wn.BIn, wn.WOut, wn.BOut, Gelu, KernelBackend.Native);
        var ym = Kernel.ExpertMlp(xm, route.ExpertIndex, gm, wm.WIn, wm.BIn, wm.WOut, wm.BOut, Gelu, KernelBackend.Managed);
        AssertClose(ym, yn, "y");
        yn.mul(dy).sum().backward();
        ym.mul(dy).sum().backward();
        AssertClose(xm.grad!, xn.grad!, "dx");
        AssertClose(gm.grad!, gn.grad!, "dgates");
        string[] names = ["dW_in", "db_in", "dW_out", "db_out"];
        for (int i = 0; i < 4; i++) AssertClose(wm.All[i].grad!, wn.All[i].grad!, names[i]);

        var layout = DispatchLayout.Of(route.ExpertIndex, e, 0.25);
        Assert.Equal(!skewed, layout.IsPadded);   // both code paths are the ones this case means to cover
    }

    [Fact]
    public void CombinedOutputIsTheGateWeightedSumOfExpertOutputs()
    {
        using var scope = NewDisposeScope();
        manual_seed(4);
        long tokens = 37, d = 8, f = 16, e = 4;
        var x = randn(tokens, d);
        var w = Experts.Random(e, d, f);
        var route = Routed(randn(tokens, e), 2, KernelBackend.Native);
        var y = Kernel.ExpertMlp(x, route.ExpertIndex, route.Gates, w.WIn, w.BIn, w.WOut, w.BOut, Gelu, KernelBackend.Native);
        // Every expert applied densely to every token: [experts, tokens, d].
        var all = Gelu(x.unsqueeze(0).matmul(w.WIn).add(w.BIn.unsqueeze(1))).matmul(w.WOut).add(w.BOut.unsqueeze(1));
        var index = route.ExpertIndex.data<long>().ToArray();
        var gates = route.Gates.data<float>().ToArray();
        for (long t = 0; t < tokens; t++)
        {
            var expected = zeros(d);
            for (int s = 0; s < 2; s++) expected = expected.add(all[index[t * 2 + s], t].mul(gates[t * 2 + s]));
            AssertClose(expected, y[t], $"token {t}");
        }
    }

    [Theory]
    [InlineData(KernelBackend.Native)]
    [InlineData(KernelBackend.Managed)]
    public void HandComputedRouting(KernelBackend backend)
    {
        using var scope = NewDisposeScope();
        var weights = HandWeights();
        var r = Kernel.Route(weights, 2, renormalize: true, backend: backend);
        Assert.Equal(new long[] { 1, 2, 2, 3, 0, 1 }, r.ExpertIndex.data<long>().ToArray());
        Assert.Equal(new long[] { 1, 2, 2, 1 }, r.Counts);
        // Renormalized over the chosen two: a softmax over their logits (Mixtral).
        double e1 = Math.E, e4 = Math.Exp(4), e2 = Math.Exp(2);
        var expected = new[] { e1 / (e1 + 1), 1 / (e1 + 1), e4 / (e4 + 1), 1 / (e4 + 1), e2 / (e2 + 1), 1 / (e2 + 1) };
        var gates = r.Gates.data<float>().ToArray();
        for (int i = 0; i < 6; i++) Assert.True(Math.Abs(gates[i] - expected[i]) < 1e-6, $"gate {i}: {gates[i]} vs {expected[i]}");
        Assert.Equal(0, r.Dropped);
        Assert.Equal(6, r.Pairs);

        // Not renormalized (the toy MoE's gate): the softmax over all experts, read at the chosen ones.
        var plain = Kernel.Route(weights, 2, backend: backend);
        double z0 = Math.Exp(1) + Math.Exp(3) + Math.Exp(2) + 1;
        Assert.True(Math.Abs(plain.Gates[0, 0, 0].item<float>() - Math.Exp(3) / z0) < 1e-6);
        Assert.True(Math.Abs(plain.Gates[0, 0, 1].item<float>() - Math.Exp(2) / z0) < 1e-6);
    }

    [Theory]
    [InlineData(KernelBackend.Native)]
    [InlineData(KernelBackend.Managed)]
    public void CapacityOverflowReportsDroppedPairs(KernelBackend backend)
    {
        using var scope = NewDisposeScope();
        long capacity = ExpertRouting.CapacityOf(2.0 / 3, 3, 2, 4);
        Assert.Equal(1, capacity);   // ceil(2/3 · 3 tokens · 2 / 4 experts)
        var r = Kernel.Route(HandWeights(), 2, capacity: capacity, backend: backend);
        // First choices claim capacity first: t0->1, t1->2, t2->0; then t0->2 is full, t1->3 fits, t2->1 is full.
        Assert.Equal(2, r.Dropped);
        Assert.Equal(new long[] { 0, 1, 2, 1 }, r.Kept.logical_not().squeeze(0).nonzero().reshape(-1).data<long>().ToArray());
        Assert.Equal(new long[] { 1, 1, 1, 1 }, r.Counts);
        Assert.Equal(0f, r.Gates[0, 0, 1].item<float>());
        Assert.Equal(0f, r.Gates[0, 2, 1].item<float>());
        Assert.True(r.Gates[0, 1, 1].item<float>() > 0);
        Assert.Equal(2, r.ExpertIndex[0, 0, 1].item<long>());   // a dropped pair still says where it would have gone
    }

    [Theory]
    [InlineData(KernelBackend.Native)]
    [InlineData(KernelBackend.Managed)]
    public void GivenExpertsAreGatedAndCapacitatedByTheSameRule(KernelBackend backend)
    {
        using var scope = NewDisposeScope();
        var weights = HandWeights();
        var given = tensor(new long[] { 3, 0, /**/ 3, 2, /**/ 3, 1 }, 1, 3, 2);   // every first choice forced to expert 3
        var r = Kernel.Route(weights, 2, capacity: 2, expertIndex: given, backend: backend);
        Assert.True(Same(given, r.ExpertIndex));
        Assert.Equal(new long[] { 1, 1, 1, 2 }, r.Counts);   // expert 3 keeps two of three
        Assert.Equal(1, r.Dropped);
        Assert.False(r.Kept[0, 2, 0].item<bool>());
        Assert.Equal(weights[0, 1, 2].item<float>(), r.Gates[0, 1, 1].item<float>());
        var bad = Assert.Throws<ArgumentOutOfRangeException>(() => Kernel.Route(weights, 2, expertIndex: given.add(1), backend: backend));
        Assert.Contains("expert index out of range [0, 4): found 4", bad.Message);
        var shape = Assert.Throws<ArgumentException>(() => Kernel.Route(weights.squeeze(0), 2, backend: backend));
        Assert.Contains("expert weights must be [groups, tokens, experts], got [3, 4]", shape.Message);
    }

    [Theory]
    [InlineData(KernelBackend.Native)]
    [InlineData(KernelBackend.Managed)]
    public void EveryGroupIsRoutedAsIfAlone(KernelBackend backend)
    {
        using var scope = NewDisposeScope();
        manual_seed(8);
        var weights = randn(3, 40, 5).softmax(-1);   // [groups, tokens, experts]
        var all = Kernel.Route(weights, 2, capacity: 12, backend: backend);
        Assert.True(all.Dropped > 0, "capacity 12 of 16 pairs per expert on average must drop");
        long dropped = 0;
        for (int g = 0; g < 3; g++)
        {
            var alone = Kernel.Route(weights.narrow(0, g, 1), 2, capacity: 12, backend: backend);
            Assert.True(Same(alone.Kept, all.Kept.narrow(0, g, 1)), $"group {g}: kept differs");
            Assert.Equal(alone.Counts, all.Counts.Skip(5 * g).Take(5).ToArray());
            dropped += alone.Dropped;
        }
        Assert.Equal(dropped, all.Dropped);
    }

    [Fact]
    public void RoutingGradientsMatchManaged()
    {
        using var scope = NewDisposeScope();
        manual_seed(9);
        var weights = randn(2, 50, 8).softmax(-1);
        var w = randn(2, 50, 2);
        long capacity = ExpertRouting.CapacityOf(1.0, 50, 2, 8);
        foreach (var renormalize in new[] { false, true })
        {
            var wn = weights.clone().requires_grad_();
            var wm = weights.clone().requires_grad_();
            var rn = Kernel.Route(wn, 2, renormalize, capacity, backend: KernelBackend.Native);
            var rm = Kernel.Route(wm, 2, renormalize, capacity, backend: KernelBackend.Managed);
            Assert.True(rn.Dropped > 0, "the comparison covers dropped pairs");
            Assert.True(Same(rn.ExpertIndex, rm.ExpertIndex), $"renormalize {renormalize}: indices differ");
            Assert.True(Same(rn.Kept, rm.Kept), $"renormalize {renormalize}: kept differs");
            Assert.Equal(rm.Counts, rn.Counts);
            AssertClose(rm.Gates, rn.Gates, $"renormalize {renormalize} gates");
            rn.Gates.mul(w).sum().backward();
            rm.Gates.mul(w).sum().backward();
            AssertClose(wm.grad!, wn.grad!, $"renormalize {renormalize} dweights");
        }
    }

    [Fact]
    public void OutOfRangeExpertIdIsANativeErrorNamingTheToken()
    {
        using var scope = NewDisposeScope();
        var index = tensor(new long[] { 0, 1, 2, 7 }, 2, 2);
        var e = Assert.Throws<NativeException>(() => DispatchLayout.Of(index, 4, 0.25));
        Assert.Equal(4, e.Status);
        Assert.Contains("expert index 7 at token 1 slot 1 is out of range [0, 4)", e.NativeMessage);
    }
}
