using MechInterp.Kernels;
using MechInterp.Native;
using static TorchSharp.torch;

namespace MechInterp.Tests;

/// <summary>The native fused attention equals its managed twin: output, scores, pattern and gradients.</summary>
public class NativeAttentionTests
{
    public NativeAttentionTests() =>
        Assert.True(NativeKernels.IsAvailable, $"the native library must be built for these tests: {NativeKernels.UnavailableReason}");

    private static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    private static void AssertClose(Tensor expected, Tensor actual, string what, double tol = 1e-5)
    {
        Assert.False(actual.isnan().any().item<bool>(), $"{what} has NaN");
        // Masked scores are -inf on both sides; compare the finite part.
        var finite = expected.isfinite();
        Assert.True(Same(finite, actual.isfinite()), $"{what}: -inf entries differ");
        double diff = expected.where(finite, 0).sub(actual.where(finite, 0)).abs().max().item<float>();
        double scale = Math.Max(1.0, expected.where(finite, 0).abs().max().item<float>());
        Assert.True(diff <= tol * scale, $"{what}: max |native - managed| = {diff:E3} > {tol * scale:E3}");
    }

    /// <summary>Rotary tables as the model builds them (its own Rotary): cos and signed sin over positions, [pos, rotary_dim].</summary>
    private static RotaryTables Tables(long pos, int rd) => new MechInterp.Model.Rotary(rd).Tables(pos, ScalarType.Float32);

    // Native == managed over random shapes, rotary or not, is a property: KernelEquivalenceProperties (Analysis.Tests).

    [Fact]
    public void RotaryTablesMoveTheOutput()
    {
        using var scope = NewDisposeScope();
        manual_seed(17);
        var q = randn(1, 2, 33, 12);
        var k = randn(1, 2, 33, 12);
        var v = randn(1, 2, 33, 12);
        var tables = Tables(33, 6);
        // The native rotary kernel equals the managed one (the property); this says rotary is not a no-op on both.
        foreach (var backend in new[] { KernelBackend.Native, KernelBackend.Managed })
        {
            var plain = Kernel.Attention(q, k, v, true, false, backend).Z;
            Assert.True((plain - Kernel.Attention(q, k, v, true, false, backend, tables).Z).abs().max().item<float>() > 1e-3, $"{backend}");
        }
    }

    [Fact]
    public void BadRotaryTablesAreNamed()
    {
        using var scope = NewDisposeScope();
        var q = randn(1, 1, 6, 8);
        var e = Assert.Throws<ArgumentException>(() => Kernel.Attention(q, q, q, true, false, KernelBackend.Native, Tables(4, 8)));
        Assert.Contains("[kv_len = 6, rotary_dim]", e.Message);
        e = Assert.Throws<ArgumentException>(() => Kernel.Attention(q, q, q, true, false, KernelBackend.Native, Tables(6, 10)));
        Assert.Contains("rotary_dim (10) must be even and at most d_head (8)", e.Message);
        var longQ = randn(1, 1, 7, 8);
        e = Assert.Throws<ArgumentException>(() => Kernel.Attention(longQ, q, q, true, false, KernelBackend.Native, Tables(6, 8)));
        Assert.Contains("q_len (7) <= kv_len (6)", e.Message);
    }

    [Fact]
    public void GradientThroughReturnedScoresMatchesManaged()
    {
        using var scope = NewDisposeScope();
        manual_seed(5);
        var q = randn(1, 2, 9, 8);
        var ws = randn(1, 2, 9, 9);
        var qn = q.clone().requires_grad_();
        var qm = q.clone().requires_grad_();
        var kv = randn(1, 2, 9, 8);
        var n = Kernel.Attention(qn, kv, kv, causal: true, returnPattern: true, KernelBackend.Native);
        var m = Kernel.Attention(qm, kv, kv, causal: true, returnPattern: true, KernelBackend.Managed);
        // Masked scores are -inf; a loss reads only the visible ones.
        n.Scores!.masked_fill(n.Scores!.isinf(), 0).mul(ws).sum().backward();
        m.Scores!.masked_fill(m.Scores!.isinf(), 0).mul(ws).sum().backward();
        AssertClose(qm.grad!, qn.grad!, "dq from scores");
        Assert.True(qn.grad!.abs().sum().item<float>() > 0, "the scores must carry gradient");
    }

    [Fact]
    public void ScoresAndPatternAreReturnedEachOnItsOwnWithTheirGradients()
    {
        using var scope = NewDisposeScope();
        manual_seed(8);
        var q = randn(2, 3, 70, 16);   // two key blocks: the native kernel keeps a block's scores across them
        var kv = randn(2, 3, 70, 16);
        var w = randn(2, 3, 70, 70);
        foreach (var (scores, pattern) in new[] { (false, true), (true, false), (true, true), (false, false) })
        {
            var grads = new List<Tensor>();
            var results = new List<AttentionResult>();
            foreach (var backend in new[] { KernelBackend.Native, KernelBackend.Managed })
            {
                var qq = q.clone().requires_grad_();
                var r = Kernel.Attention(qq, kv, kv, causal: true, returnPattern: pattern, backend, returnScores: scores);
                Assert.Equal(scores, r.Scores is not null);
                Assert.Equal(pattern, r.Pattern is not null);
                // A loss on what came back (visible scores only, as masked ones are -inf) besides z.
                var loss = r.Z.sum();
                if (r.Scores is not null) loss = loss.add(r.Scores.masked_fill(r.Scores.isinf(), 0).mul(w).sum());
                if (r.Pattern is not null) loss = loss.add(r.Pattern.mul(w).sum());
                loss.backward();
                grads.Add(qq.grad!);
                results.Add(r);
            }
            string what = $"scores {scores}, pattern {pattern}";
            AssertClose(results[1].Z, results[0].Z, $"z ({what})");
            if (scores) AssertClose(results[1].Scores!, results[0].Scores!, $"scores ({what})");
            if (pattern) AssertClose(results[1].Pattern!, results[0].Pattern!, $"pattern ({what})");
            AssertClose(grads[1], grads[0], $"dq ({what})", tol: 1e-4);
        }
        // Unset, returnScores follows returnPattern.
        Assert.NotNull(Kernel.Attention(q, kv, kv, causal: true, returnPattern: true, KernelBackend.Native).Scores);
        Assert.Null(Kernel.Attention(q, kv, kv, causal: true, returnPattern: false, KernelBackend.Native).Scores);
    }

    [Fact]
    public void NonContiguousHeadsViewIsCorrect()
    {
        using var scope = NewDisposeScope();
        manual_seed(3);
        var qkv = randn(new long[] { 2, 19, 3, 4, 16 });                                  // [batch, pos, qkv, head, d_head]
        var q = qkv.select(2, 0).transpose(1, 2);                          // [batch, head, pos, d_head], a strided view
        var k = qkv.select(2, 1).transpose(1, 2);
        var v = qkv.select(2, 2).transpose(1, 2);
        Assert.False(q.is_contiguous());
        var native = Kernel.Attention(q, k, v, causal: true, returnPattern: false, KernelBackend.Native);
        var managed = Kernel.Attention(q, k, v, causal: true, returnPattern: false, KernelBackend.Managed);
        AssertClose(managed.Z, native.Z, "z of strided views");
    }

    [Fact]
    public void ExtremeLogitsGiveNoNaN()
    {
        using var scope = NewDisposeScope();
        var q = randn(1, 1, 40, 8).mul(1e3);
        var k = randn(1, 1, 40, 8).mul(1e3);
        var v = randn(1, 1, 40, 8);
        var r = Kernel.Attention(q, k, v, causal: true, returnPattern: true, KernelBackend.Native);
        Assert.False(r.Z.isnan().any().item<bool>());
        Assert.True(r.Pattern!.sum(-1).sub(1).abs().max().item<float>() < 1e-5);
    }

    [Fact]
    public void ThreadSettingReachesTheNativeLibraryAndResultsDoNotDependOnIt()
    {
        using var scope = NewDisposeScope();
        manual_seed(2);
        var q = randn(2, 4, 70, 16);
        int before = Settings.Threads;
        try
        {
            Settings.Threads = 1;
            Assert.Equal(1, NativeMethods.mi_get_num_threads());
            var one = Kernel.Attention(q, q, q, causal: true, returnPattern: false, KernelBackend.Native).Z;
            Settings.Threads = 2;
            Assert.Equal(2, NativeMethods.mi_get_num_threads());
            var two = Kernel.Attention(q, q, q, causal: true, returnPattern: false, KernelBackend.Native).Z;
            Assert.True(Same(one, two), "each query block is computed by one thread: results must be bitwise equal");
        }
        finally { Settings.Threads = before; }
    }

    /// <summary>Every back end this CPU runs (AVX2, AVX-512) agrees with the portable loops.</summary>
    [Fact]
    public void EveryVectorPathEqualsThePortablePath()
    {
        using var scope = NewDisposeScope();
        manual_seed(8);
        var q = randn(1, 2, 33, 12);
        try
        {
            Ensure.Ok(NativeMethods.mi_set_simd(0), "mi_set_simd");
            var portable = Kernel.Attention(q, q, q, causal: true, returnPattern: true, KernelBackend.Native);
            int widest = NativeKernels.CpuHasAvx512 ? 2 : NativeKernels.CpuHasAvx2 ? 1 : 0;
            Assert.True(widest > 0, "this test needs a CPU with AVX2: every x86-64 machine this project runs on has it");
            for (int level = 1; level <= widest; level++)
            {
                Ensure.Ok(NativeMethods.mi_set_simd(level), "mi_set_simd");
                Assert.Equal(level, NativeMethods.mi_get_simd());
                var fast = Kernel.Attention(q, q, q, causal: true, returnPattern: true, KernelBackend.Native);
                AssertClose(portable.Z, fast.Z, $"z portable vs {NativeKernels.Simd}");
                AssertClose(portable.Pattern!, fast.Pattern!, $"pattern portable vs {NativeKernels.Simd}");
            }
        }
        finally { Ensure.Ok(NativeMethods.mi_set_simd(Settings.SimdLevel), "mi_set_simd"); }
    }

    [Fact]
    public void SimdSettingParsesItsThreeNamesAndReachesTheLibrary()
    {
        Assert.Equal(2, Settings.ParseSimd(null));
        Assert.Equal(2, Settings.ParseSimd("AVX512"));
        Assert.Equal(1, Settings.ParseSimd("avx2"));
        Assert.Equal(0, Settings.ParseSimd("portable"));
        var e = Assert.Throws<ArgumentException>(() => Settings.ParseSimd("sse"));
        Assert.Contains("MECHINTERP_SIMD must be avx512, avx2 or portable, got 'sse'", e.Message);
        Assert.True(NativeKernels.IsAvailable, NativeKernels.UnavailableReason);
        int cpu = NativeKernels.CpuHasAvx512 ? 2 : NativeKernels.CpuHasAvx2 ? 1 : 0;
        Assert.Equal(Math.Min(Settings.SimdLevel, cpu), NativeMethods.mi_get_simd());
    }

    [Fact]
    public void WrongDtypeIsRejectedByName()
    {
        using var q = ones(1, 1, 2, 4, dtype: ScalarType.Float64);
        var e = Assert.Throws<ArgumentException>(() => Kernel.Attention(q, q, q, causal: true, backend: KernelBackend.Native));
        Assert.Contains("q must be float32", e.Message);
    }
}
