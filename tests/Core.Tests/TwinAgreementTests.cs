using MechInterp.Kernels;
using static TorchSharp.torch;

namespace MechInterp.Tests;

/// <summary>Inputs on which the native kernels and their managed twins used to disagree silently: now one answer.</summary>
public class TwinAgreementTests
{
    public static TheoryData<KernelBackend> Backends => new() { KernelBackend.Native, KernelBackend.Managed };

    [Theory]
    [MemberData(nameof(Backends))]
    public void CausalAttentionWithMoreQueriesThanKeysIsRejected(KernelBackend backend)
    {
        // The first q_len - kv_len queries see no key: native gave 0 there, managed NaN.
        using var scope = NewDisposeScope();
        var q = randn(1, 2, 6, 8);
        var kv = randn(1, 2, 4, 8);
        foreach (bool pattern in new[] { false, true })
        {
            var e = Assert.Throws<ArgumentException>(() => Kernel.Attention(q, kv, kv, causal: true, returnPattern: pattern, backend: backend));
            Assert.Contains("causal attention needs q_len (6) <= kv_len (4): the first 2 queries would see no key", e.Message);
        }
        Assert.Equal(new long[] { 1, 2, 6, 8 }, Kernel.Attention(q, kv, kv, causal: false, backend: backend).Z.shape);
    }

    /// <summary>Which query rows of z hold a NaN, head 0.</summary>
    private static bool[] NaNRows(Tensor z) => z.isnan().any(-1)[0, 0].data<bool>().ToArray();

    [Theory]
    [MemberData(nameof(Backends))]
    public void ANaNInAQueryRowMakesThatOutputRowNaN(KernelBackend backend)
    {
        // Managed SDPA returned finite values for the row; native propagated the NaN.
        using var scope = NewDisposeScope();
        manual_seed(5);
        var q = randn(1, 1, 5, 8);
        var k = randn(1, 1, 5, 8);
        var v = randn(1, 1, 5, 8);
        q[0, 0, 2, 3] = tensor(float.NaN);
        foreach (bool pattern in new[] { false, true })
            Assert.Equal(new[] { false, false, true, false, false },
                NaNRows(Kernel.Attention(q, k, v, causal: true, returnPattern: pattern, backend: backend).Z));
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void ANaNInAKeyRowReachesTheQueriesThatSeeIt(KernelBackend backend)
    {
        using var scope = NewDisposeScope();
        manual_seed(6);
        var q = randn(1, 1, 5, 8);
        var k = randn(1, 1, 5, 8);
        var v = randn(1, 1, 5, 8);
        k[0, 0, 3, 0] = tensor(float.NaN);
        foreach (bool pattern in new[] { false, true })
            Assert.Equal(new[] { false, false, false, true, true },
                NaNRows(Kernel.Attention(q, k, v, causal: true, returnPattern: pattern, backend: backend).Z));
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void AFiniteQueryKeepsTheSameGradientWithTheNaNGuard(KernelBackend backend)
    {
        // The managed guard adds 0 · Σ q: finite inputs must get the same output and gradient on both twins.
        using var scope = NewDisposeScope();
        manual_seed(7);
        var q = randn(new long[] { 1, 2, 6, 8 }, requires_grad: true);
        var k = randn(1, 2, 6, 8);
        var z = Kernel.Attention(q, k, k, causal: true, backend: backend).Z;
        z.sum().backward();
        var reference = q.detach().clone().requires_grad_(true);
        var scores = reference.matmul(k.transpose(-2, -1)).div(Math.Sqrt(8)).masked_fill(ones(6, 6, dtype: ScalarType.Bool).triu(1), float.NegativeInfinity);
        var zRef = scores.softmax(-1).matmul(k);
        zRef.sum().backward();
        Assert.True(z.allclose(zRef, rtol: 1e-4, atol: 1e-5));
        Assert.True(q.grad!.allclose(reference.grad!, rtol: 1e-3, atol: 1e-5));
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void AllNaNRouterLogitsAreRejectedNamingTheToken(KernelBackend backend)
    {
        // The twins chose different experts for such a token.
        using var scope = NewDisposeScope();
        var logits = randn(1, 4, 6);                                     // [groups, tokens, experts]
        logits[0, 2] = full(6, float.NaN);
        var weights = logits.softmax(-1);                                  // what the MoE layer routes on
        var e = Assert.Throws<ArgumentException>(() => Kernel.Route(weights, 2, backend: backend));
        Assert.Contains("expert weights are all NaN for token 2 of group 0 (of 4 tokens)", e.Message);
    }
}
