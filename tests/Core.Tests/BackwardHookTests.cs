using MechInterp.Hooks;
using MechInterp.Model;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace MechInterp.Tests;

/// <summary>Backward hooks (TransformerLens's dir="bwd") and the gradient cache, against finite differences in float64.</summary>
public class BackwardHookTests(ITestOutputHelper output)
{
    private static DecoderConfig Config(string norm = "LN") => new()
    {
        d_model = 8, n_layers = 2, n_heads = 2, d_mlp = 12, d_vocab = 7, n_ctx = 6, seed = 5, normalization_type = norm,
    };

    /// <summary>A logit difference at the last position: the kind of metric attribution uses.</summary>
    private static Tensor Metric(Tensor logits) => logits[0, -1, 2] - logits[0, -1, 5];

    [Theory]
    [InlineData("LN")]
    [InlineData("RMS")]
    public void CachedGradientsMatchFiniteDifferences(string norm)
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(Config(norm));
        model.to(ScalarType.Float64);
        var tokens = ModelTests.Tokens(2, 6, 7, 1);
        string[] names = [HookNames.Embed, HookNames.PosEmbed, HookNames.ResidPre(0), HookNames.LnScale(0, 1), HookNames.V(0),
            HookNames.Pattern(1), HookNames.AttnScores(1), HookNames.ResidMid(0), HookNames.MlpPost(1),
            HookNames.MlpOut(1), HookNames.LnFinalNormalized];
        var (value, acts, grads) = model.RunWithCacheAndGradients(tokens, Metric, names.Contains);
        using (acts)
        using (grads)
        {
            Assert.Equal(names.Order(), grads.Keys.Order());
            var rng = new Random(0);
            const double eps = 1e-6;
            double worst = 0;
            foreach (var name in names)
            {
                Assert.Equal(acts[name].shape, grads[name].shape);
                var grad = grads[name].reshape(-1);
                for (int i = 0; i < 4; i++)
                {
                    long at = rng.NextInt64(grad.numel());
                    double Eval(double delta)
                    {
                        using var _ = no_grad();
                        var hook = new Hook(name, (a, _) =>
                        {
                            var d = zeros(a.numel(), dtype: a.dtype);
                            d[at] = delta;
                            return a.add(d.view(a.shape));
                        });
                        return Metric(model.RunWithHooks(tokens, hook)).item<double>();
                    }
                    double numeric = (Eval(eps) - Eval(-eps)) / (2 * eps), analytic = grad[at].item<double>();
                    double error = Math.Abs(numeric - analytic);
                    worst = Math.Max(worst, error);
                    Assert.True(error <= 1e-7 + 1e-5 * Math.Abs(numeric), $"{name}[{at}]: backward hook {analytic:E6}, finite difference {numeric:E6}");
                }
            }
            output.WriteLine($"{norm}: worst |autograd - finite difference| over {names.Length * 4} entries: {worst:E2}");
            Assert.Equal(Metric(model.forward(tokens)).item<double>(), value.item<double>(), 12);
        }
    }

    [Fact]
    public void ABackwardHookReplacesTheGradientThatFlowsOn()
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(Config());
        var tokens = ModelTests.Tokens(2, 6, 7, 2);
        Tensor? embedGrad = null;
        var record = new Hook(HookNames.Embed, (g, _) => { embedGrad = g.clone(); return null; });

        model.zero_grad();
        model.RunWithBackwardHooks(tokens, Metric, [record]);
        var plain = embedGrad!;
        var plainWE = model.embed.W_E.grad!.clone();
        Assert.True(plain.abs().max().item<float>() > 0);

        model.zero_grad();
        model.RunWithBackwardHooks(tokens, Metric, [new Hook(HookNames.ResidPost(0), (g, _) => g.mul(2)), record]);
        Assert.True(embedGrad!.allclose(plain.mul(2), rtol: 1e-5, atol: 1e-7));
        Assert.True(model.embed.W_E.grad!.allclose(plainWE.mul(2), rtol: 1e-5, atol: 1e-7));

        // Every path from the embedding to the logits passes through layer 0's resid_post.
        model.zero_grad();
        model.RunWithBackwardHooks(tokens, Metric, [new Hook(HookNames.ResidPost(0), (g, _) => zeros_like(g)), record]);
        Assert.Equal(0f, embedGrad!.abs().max().item<float>());
        Assert.Equal(0f, model.embed.W_E.grad!.abs().max().item<float>());
        Assert.DoesNotContain(model.Hooks.Points.Values, p => p.IsActive);
    }

    [Fact]
    public void BackwardHooksAreRemovedAfterTheCallAndAfterAThrow()
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(Config());
        var tokens = ModelTests.Tokens(1, 6, 7, 3);
        var every = new Hook(_ => true, (g, _) => null);

        Assert.Throws<InvalidOperationException>(() =>
            model.RunWithBackwardHooks(tokens, _ => throw new InvalidOperationException("metric failed"), [every]));
        Assert.DoesNotContain(model.Hooks.Points.Values, p => p.IsActive);

        var e = Assert.Throws<InvalidOperationException>(() => model.RunWithBackwardHooks(tokens, Metric,
            [new Hook(HookNames.AttnOut(1), (_, _) => throw new InvalidOperationException("boom"))]));
        Assert.Equal("boom", e.Message);
        Assert.DoesNotContain(model.Hooks.Points.Values, p => p.IsActive);

        var shape = Assert.Throws<InvalidOperationException>(() => model.RunWithBackwardHooks(tokens, Metric,
            [new Hook(HookNames.MlpOut(0), (g, _) => g.sum(-1))]));
        Assert.Contains("backward hook on 'blocks.0.hook_mlp_out' returned shape [1, 6] but the gradient is [1, 6, 8]", shape.Message);

        Assert.Throws<KeyNotFoundException>(() => model.RunWithBackwardHooks(tokens, Metric, [every, new Hook("blocks.0.hook_resid_psot", (g, _) => null)]));
        Assert.DoesNotContain(model.Hooks.Points.Values, p => p.IsActive);

        // A hook runs once for each use of its activation.
        int calls = 0;
        model.RunWithBackwardHooks(tokens, Metric, [new Hook(HookNames.Embed, (g, _) => { calls++; return null; })]);
        Assert.Equal(1, calls);
    }

    [Fact]
    public void BadMetricsAndNoGradAreNamed()
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(Config());
        var tokens = ModelTests.Tokens(1, 6, 7, 3);
        var vector = Assert.Throws<ArgumentException>(() => model.RunWithBackwardHooks(tokens, l => l[0, -1], []));
        Assert.Contains("one floating-point value", vector.Message);
        Assert.Contains("[7]", vector.Message);
        var detached = Assert.Throws<ArgumentException>(() => model.RunWithBackwardHooks(tokens, l => Metric(l).detach(), []));
        Assert.Contains("detached", detached.Message);
        using (no_grad())
            Assert.Throws<InvalidOperationException>(() => model.RunWithBackwardHooks(tokens, Metric, []));
    }

    [Fact]
    public void FrozenParametersStillGiveActivationGradients()
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(Config());
        foreach (var p in model.parameters()) p.requires_grad = false;
        var (_, acts, grads) = model.RunWithCacheAndGradients(ModelTests.Tokens(1, 6, 7, 3), Metric, n => n.EndsWith("hook_resid_post"));
        using (acts)
        using (grads)
        {
            Assert.Equal(2, grads.Count);
            Assert.True(grads[HookNames.ResidPost(0)].abs().max().item<float>() > 0);
        }
    }
}
