using MechInterp.Hooks;
using MechInterp.Model;
using static TorchSharp.torch;

namespace MechInterp.Tests;

public class HookTests
{
    [Fact]
    public void HooksAreRemovedAfterTheCallAndAfterAThrow()
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(ModelTests.Tiny());
        var tokens = ModelTests.Tokens(1, 5, 11, 4);
        model.RunWithHooks(tokens, new Hook(HookNames.ResidPost(0), (a, _) => a.mul(0)));
        Assert.DoesNotContain(model.Hooks.Points.Values, p => p.IsActive);

        Assert.Throws<InvalidOperationException>(() =>
            model.RunWithHooks(tokens, new Hook(HookNames.AttnOut(1), (_, _) => throw new InvalidOperationException("boom"))));
        Assert.DoesNotContain(model.Hooks.Points.Values, p => p.IsActive);
    }

    [Fact]
    public void AHookThatReturnsTheWrongShapeIsNamed()
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(ModelTests.Tiny());
        var e = Assert.Throws<InvalidOperationException>(() =>
            model.RunWithHooks(ModelTests.Tokens(1, 5, 11, 4), new Hook(HookNames.MlpOut(0), (a, _) => a.sum(-1))));
        Assert.Contains("hook on 'blocks.0.hook_mlp_out' returned shape [1, 5]", e.Message);
    }

    [Fact]
    public void AnUnknownHookNameIsAnError()
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(ModelTests.Tiny());
        var e = Assert.Throws<KeyNotFoundException>(() =>
            model.RunWithHooks(ModelTests.Tokens(1, 5, 11, 4), new Hook("blocks.0.attn.hook_patern", (a, _) => a)));
        Assert.Contains("no hook point named 'blocks.0.attn.hook_patern'", e.Message);
    }

    [Fact]
    public void ACacheOfThePatternAloneOrTheScoresAloneHoldsWhatACacheOfBothHolds()
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(ModelTests.Tiny());
        var tokens = ModelTests.Tokens(2, 6, 11, 5);
        // The fused kernel is asked only for what the cache keeps: the pattern, the scores, or both; the same values.
        var (_, both) = model.RunWithCache(tokens, n => n.EndsWith("hook_pattern") || n.EndsWith("hook_attn_scores"));
        var (_, patterns) = model.RunWithCache(tokens, n => n.EndsWith("hook_pattern"));
        var (_, scores) = model.RunWithCache(tokens, n => n.EndsWith("hook_attn_scores"));
        using (both)
        using (patterns)
        using (scores)
            for (int layer = 0; layer < 2; layer++)
            {
                Assert.True(patterns[HookNames.Pattern(layer)].eq(both[HookNames.Pattern(layer)]).all().item<bool>());
                Assert.False(patterns.ContainsKey(HookNames.AttnScores(layer)));
                // Masked scores are -inf in both, and -inf == -inf.
                Assert.True(scores[HookNames.AttnScores(layer)].eq(both[HookNames.AttnScores(layer)]).all().item<bool>());
                Assert.False(scores.ContainsKey(HookNames.Pattern(layer)));
            }
    }

    [Fact]
    public void ReplacingThePatternChangesTheOutputAndTheCacheSeesTheReplacement()
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(ModelTests.Tiny());
        var tokens = ModelTests.Tokens(2, 6, 11, 5);
        var clean = model.Forward(tokens);
        // Attend only to position 0: a pattern no trained head computes.
        HookFn firstToken = (a, _) => zeros_like(a).index_fill(-1, tensor(0L), 1.0);
        var (patched, cache) = model.RunWithCache(tokens, n => n.Contains("hook_pattern"), new Hook(HookNames.Pattern(0), firstToken));
        using (cache)
        {
            Assert.False(patched.allclose(clean, atol: 1e-4));
            Assert.Equal(1f, cache[HookNames.Pattern(0)][.., .., .., 0].min().item<float>());
            // An observer-only run keeps the fused path and must match the plain forward.
            var (again, cache2) = model.RunWithCache(tokens);
            using (cache2) Assert.True(again.allclose(clean, atol: 1e-6));
        }
    }

    [Fact]
    public void AFilterHookSeesEveryMatchingPoint()
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(ModelTests.Tiny());
        var seen = new List<string>();
        model.RunWithHooks(ModelTests.Tokens(1, 3, 11, 1), new Hook(n => n.EndsWith("hook_resid_pre"), (_, hp) => { seen.Add(hp.Name); return null; }));
        Assert.Equal([HookNames.ResidPre(0), HookNames.ResidPre(1)], seen);
    }
}
