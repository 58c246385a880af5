using MechInterp.Circuits;
using MechInterp.Hooks;
using MechInterp.Model;
using static TorchSharp.torch;

namespace MechInterp.Tests;

/// <summary>Factored matrices, copying and composition scores on heads whose answers are known, and hook-name helpers.</summary>
public class CircuitTests
{
    [Fact]
    public void AFactoredMatrixHasItsProductsNormAndNonzeroEigenvalues()
    {
        using var scope = NewDisposeScope();
        var g = new Generator(5);
        var a = randn(6, 2, dtype: ScalarType.Float64, generator: g);
        var b = randn(2, 6, dtype: ScalarType.Float64, generator: g);
        var m = new FactoredMatrix(a, b);
        Assert.Equal(a.matmul(b).norm().item<double>(), m.Norm(), 10);
        var full = linalg.eigvals(a.matmul(b)).abs().sort(descending: true).Values.narrow(0, 0, 2);
        var factored = m.Eigenvalues().abs().sort(descending: true).Values;
        Assert.True(full.allclose(factored, rtol: 1e-8, atol: 1e-10), $"[{string.Join(", ", full.data<double>().ToArray())}] vs [{string.Join(", ", factored.data<double>().ToArray())}]");
        Assert.True(m.T.AB.allclose(a.matmul(b).t()));
        Assert.Throws<ArgumentException>(() => new FactoredMatrix(a, a));
    }

    private static HookedTransformer Identity(float sign)
    {
        var model = new HookedTransformer(new DecoderConfig { d_model = 8, n_layers = 1, n_heads = 1, d_head = 8, d_vocab = 8, n_ctx = 4, attn_only = true });
        using var _ = no_grad();
        var eye8 = eye(8);
        model.embed.W_E.copy_(eye8);
        model.unembed.W_U.copy_(eye8);
        model.blocks[0].attn.W_V[0].copy_(eye8);
        model.blocks[0].attn.W_O[0].copy_(eye8.mul(sign));
        return model;
    }

    [Fact]
    public void ACopyingHeadScoresOneAndASuppressingHeadMinusOne()
    {
        using var scope = NewDisposeScope();
        using var copying = Identity(1);
        using var suppressing = Identity(-1);
        Assert.Equal(1.0, HeadCircuits.CopyingScore(copying, 0, 0), 9);
        Assert.Equal(-1.0, HeadCircuits.CopyingScore(suppressing, 0, 0), 9);
        using var random = new HookedTransformer(ModelTests.Tiny());
        double score = HeadCircuits.CopyingScore(random, 1, 2);
        Assert.InRange(score, -1, 1);
    }

    [Fact]
    public void KCompositionIsSeenWhereTheLaterKeyReadsTheEarlierOutput()
    {
        using var scope = NewDisposeScope();
        // Layer 0's head writes into the first half of the stream; layer 1's head keys on that half, and its query
        // and value read the second half only.
        using var model = new HookedTransformer(new DecoderConfig { d_model = 8, n_layers = 2, n_heads = 1, d_head = 4, d_vocab = 5, n_ctx = 4, attn_only = true });
        using (no_grad())
        {
            foreach (var p in model.parameters()) p.zero_();
            var first = eye(8).narrow(1, 0, 4);     // [8, 4]: columns e_0..e_3
            var second = eye(8).narrow(1, 4, 4);    // [8, 4]: columns e_4..e_7
            model.blocks[0].attn.W_V[0].copy_(first);
            model.blocks[0].attn.W_O[0].copy_(first.t());
            model.blocks[1].attn.W_K[0].copy_(first);
            model.blocks[1].attn.W_Q[0].copy_(second);
            model.blocks[1].attn.W_V[0].copy_(second);
            model.blocks[1].attn.W_O[0].copy_(second.t());
        }
        Assert.Equal(0.5, HeadCircuits.CompositionScore(model, Composition.K, 0, 0, 1, 0), 9);   // 1/sqrt(rank 4)
        Assert.Equal(0.0, HeadCircuits.CompositionScore(model, Composition.Q, 0, 0, 1, 0), 9);
        Assert.Equal(0.0, HeadCircuits.CompositionScore(model, Composition.V, 0, 0, 1, 0), 9);
        var all = HeadCircuits.AllCompositionScores(model, Composition.K);
        Assert.Equal(0.5, all[0, 0, 1, 0], 9);
        Assert.Equal(0.0, all[1, 0, 0, 0]);
        Assert.Throws<ArgumentException>(() => HeadCircuits.CompositionScore(model, Composition.K, 1, 0, 1, 0));
    }

    [Fact]
    public void HookNamesAreTheModelsOwn()
    {
        using var model = new HookedTransformer(ModelTests.Tiny());
        string[] names =
        [
            HookNames.Embed, HookNames.PosEmbed, HookNames.LnFinalScale, HookNames.LnFinalNormalized, HookNames.ResidPre(1),
            HookNames.ResidMid(1), HookNames.ResidPost(1), HookNames.AttnOut(0), HookNames.MlpOut(0), HookNames.Q(1), HookNames.K(1),
            HookNames.V(1), HookNames.Z(0), HookNames.AttnScores(0), HookNames.Pattern(1), HookNames.MlpPre(0), HookNames.MlpPost(0),
            HookNames.LnScale(1, 2), HookNames.LnNormalized(0, 1), HookNames.Get("resid_post", 1), HookNames.Get("pattern", 0),
            HookNames.Get("post", 1), HookNames.Get("embed"), HookNames.Get("blocks.0.hook_attn_out"),
        ];
        foreach (var name in names) Assert.True(model.Hooks.Points.ContainsKey(name), $"'{name}' is not a hook of the model");
        Assert.Equal("blocks.2.hook_resid_post", HookNames.ResidPost(2));
        Assert.Equal("blocks.1.attn.hook_pattern", HookNames.Get("pattern", 1));
        Assert.Contains("unknown hook 'patern'", Assert.Throws<ArgumentException>(() => HookNames.Get("patern", 1)).Message);
        Assert.Throws<ArgumentException>(() => HookNames.Get("resid_post"));
    }

    [Fact]
    public void HookNamesCoverMoeAndRotaryHooks()
    {
        using var model = new HookedTransformer(ModelTests.Tiny(experts: 4, pos: "rotary"));
        string[] names =
        [
            HookNames.RouterLogits(1), HookNames.ExpertWeights(0), HookNames.ExpertIndices(1), HookNames.RotQ(0), HookNames.RotK(1),
            HookNames.Get("router_logits", 0), HookNames.Get("expert_indices", 1), HookNames.Get("rot_k", 0),
        ];
        foreach (var name in names) Assert.True(model.Hooks.Points.ContainsKey(name), $"'{name}' is not a hook of the model");
        Assert.Equal("blocks.3.mlp.hook_expert_indices", HookNames.ExpertIndices(3));
        Assert.Equal("blocks.0.mlp.hook_router_logits", HookNames.RouterLogits(0));
        Assert.Equal("blocks.2.attn.hook_rot_q", HookNames.RotQ(2));
        Assert.Equal(HookNames.Get("expert_weights", 4), HookNames.ExpertWeights(4));
        Assert.Throws<ArgumentOutOfRangeException>(() => HookNames.ExpertWeights(-1));
    }

    [Fact]
    public void CacheHelpersDecomposeTheStreamIntoPartsThatSumToIt()
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(ModelTests.Tiny());
        var names = CacheHelpers.ResidualHookNames(model);
        var (_, cache) = model.RunWithCache(ModelTests.Tokens(2, 6, 11, 1), n => names.Contains(n) || n == HookNames.LnFinalNormalized);
        using (cache)
        {
            var final = cache[HookNames.ResidPost(1)];
            var parts = cache.DecomposeResid(model);
            Assert.Equal(["embed", "pos_embed", "0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out"], parts.Labels);
            Assert.True(parts.Stack.sum(0L).allclose(final, rtol: 1e-4, atol: 1e-5));
            Assert.True(cache.DecomposeResidByHead(model).Stack.sum(0L).allclose(final, rtol: 1e-4, atol: 1e-5));
            Assert.Equal(["0_pre", "0_mid", "1_pre", "1_mid", "final_post"], cache.AccumulatedResid(model, includeMid: true).Labels);
            Assert.Equal(new long[] { 2, 2, 6, 16 }, cache.StackActivation(model, "resid_post").shape);
            // Under the frozen final scale the parts add up to the normalized stream before ln_final's weight and bias.
            var normalized = cache.ApplyLnToStack(model, parts).Stack.sum(0L);
            var expected = cache[HookNames.LnFinalNormalized].sub(model.ln_final.b!).div(model.ln_final.w!);
            Assert.True(normalized.allclose(expected, rtol: 1e-3, atol: 1e-4));
        }
    }
}
