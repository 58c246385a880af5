using MechInterp.Model;
using MechInterp.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace MechInterp.Tests;

/// <summary>Autograd through the whole decoder agrees with central finite differences in float64.</summary>
public class GradientCheckTests
{
    [Theory]
    [InlineData("LN", "standard", false, 0)]
    [InlineData("RMS", "rotary", true, 0)]
    [InlineData("LNPre", "standard", false, 3)]
    public void AnalyticGradientsMatchFiniteDifferences(string norm, string pos, bool attnOnly, int experts)
    {
        using var scope = NewDisposeScope();
        var cfg = new DecoderConfig
        {
            d_model = 8, n_layers = 2, n_heads = 2, d_mlp = 12, d_vocab = 7, n_ctx = 5, seed = 1, act_fn = "gelu",
            normalization_type = norm, positional_embedding_type = pos, attn_only = attnOnly,
            n_experts = experts, experts_per_token = experts > 0 ? 2 : 0,
        };
        using var model = new HookedTransformer(cfg);
        model.to(ScalarType.Float64);
        var tokens = ModelTests.Tokens(2, 5, 7, 3);
        Tensor Loss() => Losses.PerPosition(model.forward(tokens), tokens).mean();

        model.zero_grad();
        Loss().backward();
        var rng = new Random(0);
        const double eps = 1e-6;
        int checkedEntries = 0;
        foreach (var (name, p) in model.named_parameters())
        {
            var flat = p.detach().view(-1);
            var grad = p.grad!.view(-1);
            for (int i = 0; i < 3; i++)
            {
                long at = rng.NextInt64(flat.numel());
                double original = flat[at].item<double>();
                double Eval(double value)
                {
                    using var _ = no_grad();
                    flat[at] = value;
                    return Loss().item<double>();
                }
                double numeric = (Eval(original + eps) - Eval(original - eps)) / (2 * eps);
                Eval(original);
                double analytic = grad[at].item<double>();
                Assert.True(Math.Abs(numeric - analytic) <= 1e-6 + 1e-4 * Math.Abs(numeric),
                    $"{name}[{at}]: autograd {analytic:E6}, finite difference {numeric:E6}");
                checkedEntries++;
            }
        }
        Assert.True(checkedEntries > 30);
    }
}
