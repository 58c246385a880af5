using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MechInterp.Model;

/// <summary>Parameter construction from one seeded generator, so a config's seed fixes every weight.</summary>
internal sealed class Init(DecoderConfig cfg)
{
    private readonly Generator generator = new((ulong)cfg.seed);

    /// <summary>Normal(0, init_range) weights, as TransformerLens' default init.</summary>
    public Parameter Normal(params long[] shape) =>
        new(normal(0.0, cfg.InitRange, shape, generator: generator));

    public static Parameter Zeros(params long[] shape) => new(zeros(shape));

    public static Parameter Ones(params long[] shape) => new(ones(shape));
}
