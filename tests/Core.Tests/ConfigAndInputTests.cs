using MechInterp.Model;
using static TorchSharp.torch;

namespace MechInterp.Tests;

public class ConfigAndInputTests
{
    [Theory]
    [InlineData(96, 5, 0, "d_model (96) must be divisible by n_heads (5)")]
    [InlineData(0, 4, 0, "d_model must be positive, got 0")]
    [InlineData(64, 0, 0, "n_heads must be positive, got 0")]
    public void ValidateNamesTheFieldsAndValues(int dModel, int heads, int layers, string message)
    {
        var cfg = new DecoderConfig { d_model = dModel, n_heads = heads, n_layers = layers == 0 ? 2 : layers };
        var e = Assert.Throws<ArgumentException>(() => cfg.Validate());
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void ValidateRejectsInconsistentMixtureOfExperts()
    {
        var e = Assert.Throws<ArgumentException>(() => new DecoderConfig { n_experts = 4, experts_per_token = 5 }.Validate());
        Assert.Contains("experts_per_token (5) must not exceed n_experts (4)", e.Message);
        e = Assert.Throws<ArgumentException>(() => new DecoderConfig { n_experts = 4, experts_per_token = 1, attn_only = true }.Validate());
        Assert.Contains("attn_only", e.Message);
        e = Assert.Throws<ArgumentException>(() => new DecoderConfig { act_fn = "tanh" }.Validate());
        Assert.Contains("act_fn must be one of relu|gelu|gelu_new|silu, got 'tanh'", e.Message);
    }

    [Fact]
    public void ConfigJsonRoundTripsWithTransformerLensNames()
    {
        var cfg = ModelTests.Tiny(experts: 4) with { act_fn = "silu", normalization_type = "RMS" };
        string json = cfg.ToJson();
        Assert.Contains("\"d_model\":16", json);
        Assert.Contains("\"d_head\":4", json);      // derived fields are written out
        Assert.Contains("\"experts_per_token\":2", json);
        var back = DecoderConfig.FromJson(json);
        Assert.Equal(cfg with { d_head = 4 }, back);
    }

    [Fact]
    public void BadTokensGetClearErrors()
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(ModelTests.Tiny());
        Assert.Contains("token id 11 is out of range: d_vocab is 11",
            Assert.Throws<ArgumentOutOfRangeException>(() => model.Forward(tensor(new long[] { 1, 11 }).unsqueeze(0))).Message);
        Assert.Contains("token id -1 is negative",
            Assert.Throws<ArgumentOutOfRangeException>(() => model.Forward(tensor(new long[] { -1, 2 }).unsqueeze(0))).Message);
        Assert.Contains("sequence length 13 exceeds n_ctx (12)",
            Assert.Throws<ArgumentException>(() => model.Forward(zeros(1, 13, dtype: ScalarType.Int64))).Message);
        Assert.Contains("rank 3",
            Assert.Throws<ArgumentException>(() => model.Forward(zeros(1, 2, 3, dtype: ScalarType.Int64))).Message);
        Assert.Contains("integer tensor",
            Assert.Throws<ArgumentException>(() => model.Forward(zeros(1, 3))).Message);
    }
}
