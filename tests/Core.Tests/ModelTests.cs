using MechInterp.Hooks;
using MechInterp.Kernels;
using MechInterp.Model;
using static TorchSharp.torch;

namespace MechInterp.Tests;

public class ModelTests
{
    internal static DecoderConfig Tiny(string norm = "LN", bool attnOnly = false, int experts = 0, string pos = "standard") => new()
    {
        d_model = 16, n_layers = 2, n_heads = 4, d_vocab = 11, n_ctx = 12, d_mlp = 24,
        normalization_type = norm, attn_only = attnOnly, positional_embedding_type = pos,
        n_experts = experts, experts_per_token = experts > 0 ? 2 : 0, seed = 3,
    };

    internal static Tensor Tokens(long batch, long pos, int vocab, int seed) =>
        randint(0, vocab, [batch, pos], dtype: ScalarType.Int64, generator: new Generator((ulong)seed));

    [Fact]
    public void ForwardGivesLogitsOfTheRightShape()
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(Tiny());
        var logits = model.Forward(Tokens(3, 7, 11, 1));
        Assert.Equal(new long[] { 3, 7, 11 }, logits.shape);
        Assert.False(logits.isnan().any().item<bool>());
    }

    [Fact]
    public void ManagedAttentionEqualsTorchSdpaWithin1e5()
    {
        using var scope = NewDisposeScope();
        manual_seed(11);
        var q = randn(2, 3, 9, 8);
        var k = randn(2, 3, 9, 8);
        var v = randn(2, 3, 9, 8);
        var sdpa = nn.functional.scaled_dot_product_attention(q, k, v, is_casual: true);
        var materialized = Kernel.Attention(q, k, v, causal: true, returnPattern: true, backend: KernelBackend.Managed);
        Assert.True(materialized.Z.allclose(sdpa, atol: 1e-5), $"max diff {(materialized.Z - sdpa).abs().max().item<float>()}");
        Assert.True(materialized.Pattern!.sum(-1).allclose(ones(2, 3, 9), atol: 1e-5));
        Assert.Equal(0f, materialized.Pattern![.., .., 0, 1..].abs().max().item<float>());   // causal: nothing above the diagonal
    }

    [Fact]
    public void CacheHoldsEveryHookPointWithTransformerLensShapes()
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(Tiny() with { use_attn_result = true });
        var (_, cache) = model.RunWithCache(Tokens(2, 5, 11, 2));
        using (cache)
        {
            Assert.Equal(model.Hooks.Names.ToHashSet(), cache.Keys.ToHashSet());
            Assert.Equal(new long[] { 2, 5, 4, 4 }, cache[HookNames.Q(0)].shape);
            Assert.Equal(new long[] { 2, 4, 5, 5 }, cache[HookNames.Pattern(1)].shape);
            Assert.Equal(new long[] { 2, 5, 4, 16 }, cache[HookNames.Result(1)].shape);
            Assert.Equal(new long[] { 2, 5, 24 }, cache[HookNames.MlpPost(0)].shape);
            Assert.Equal(new long[] { 2, 5, 1 }, cache[HookNames.LnFinalScale].shape);
            Assert.Equal(new long[] { 2, 5, 16 }, cache[HookNames.PosEmbed].shape);
        }
    }

    [Theory]
    [InlineData("LN")]
    [InlineData("LNPre")]
    [InlineData("RMS")]
    [InlineData("none")]
    public void TheNormAppliedOutsideTheModelIsTheModelsOwn(string norm)
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(Tiny(norm));
        using (no_grad())
        {
            // Weight and bias away from 1 and 0, so that leaving either out would show.
            model.ln_final.w?.copy_(randn(16).add(1));
            model.ln_final.b?.copy_(randn(16));
        }
        var (_, cache) = model.RunWithCache(Tokens(2, 5, 11, 4), n => n.StartsWith("ln_final") || n == HookNames.ResidPost(1));
        using (cache)
        {
            var resid = cache[HookNames.ResidPost(1)];                                 // [batch, pos, d_model]
            if (norm == "none")
            {
                Assert.True(model.ln_final.Normalize(resid).eq(resid).all().item<bool>(), "no norm leaves the stream as it is");
                return;
            }
            var normalized = cache[HookNames.LnFinalNormalized];
            Assert.True(model.ln_final.Normalize(resid).allclose(normalized, rtol: 1e-5, atol: 1e-5), "Normalize");
            // With the cached scale held: the stream centred and scaled, then the weight and bias, is the output.
            var frozen = model.ln_final.ApplyFrozenScale(resid, cache[HookNames.LnFinalScale]);
            var affine = model.ln_final.w is { } w ? frozen.mul(w) : frozen;
            if (model.ln_final.b is { } b) affine = affine.add(b);
            Assert.True(affine.allclose(normalized, rtol: 1e-5, atol: 1e-5), "ApplyFrozenScale");
            var bad = Assert.Throws<ArgumentException>(() => model.ln_final.Normalize(resid.narrow(-1, 0, 3)));
            Assert.Contains("x must be [.., d_model = 16], got [2, 5, 3]", bad.Message);
        }
    }

    [Fact]
    public void HeadResultsAreTheModelsPerHeadOutputs()
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(Tiny() with { use_attn_result = true });
        var (_, cache) = model.RunWithCache(Tokens(2, 5, 11, 5), n => n.StartsWith("blocks.1.attn.hook_") || n == HookNames.AttnOut(1));
        using (cache)
        {
            var attn = model.blocks[1].attn;
            var heads = attn.HeadResults(cache[HookNames.Z(1)]);                  // [batch, pos, head, d_model]
            Assert.True(heads.allclose(cache[HookNames.Result(1)], rtol: 1e-5, atol: 1e-6), "hook_result");
            Assert.True(heads.sum(2).add(attn.b_O).allclose(cache[HookNames.AttnOut(1)], rtol: 1e-5, atol: 1e-5), "attn_out");
        }
    }

    [Fact]
    public void NamesFilterCachesOnlyWhatItAsksFor()
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(Tiny());
        var (_, cache) = model.RunWithCache(Tokens(1, 4, 11, 2), name => name.EndsWith("hook_resid_post"));
        using (cache)
            Assert.Equal([HookNames.ResidPost(0), HookNames.ResidPost(1)], cache.Keys.ToArray());
    }

    [Fact]
    public void RotaryFusedIntoTheKernelEqualsRotaryAppliedByTheModel()
    {
        // With nothing on hook_rot_q / hook_rot_k the kernel rotates q and k itself; an observer there makes the
        // model rotate them first. Both must give the same logits and gradients.
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(Tiny(attnOnly: true, pos: "rotary"));
        var tokens = Tokens(3, 9, 11, 4);
        var fused = model.forward(tokens);
        fused.pow(2).sum().backward();
        var fusedGrad = model.blocks[0].attn.W_Q.grad!.clone();
        model.zero_grad();
        var seen = 0;
        var observer = new Hook(HookNames.RotQ(0), (q, _) => { seen++; return null; });
        var unfused = model.RunWithHooks(tokens, observer);
        unfused.pow(2).sum().backward();
        Assert.Equal(1, seen);
        Assert.True((fused - unfused).abs().max().item<float>() < 1e-5, "fused and unfused rotary logits differ");
        Assert.True((fusedGrad - model.blocks[0].attn.W_Q.grad!).abs().max().item<float>() < 1e-4, "fused and unfused rotary gradients differ");
    }
}
