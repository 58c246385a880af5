using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MechInterp.Model;

/// <summary>
/// Parameter construction. An ordinary model draws every weight from one generator seeded by its config's
/// seed; a batched model has one generator per instance, drawn in the same order, so instance i's weights are
/// exactly those of an ordinary model with seed i, stacked along a leading instance dimension.
/// </summary>
internal sealed class Init
{
    private readonly DecoderConfig cfg;
    private readonly Generator[] generators;

    // Shapes only: every parameter on the meta device (a shape, no memory), so a checkpoint's header can be checked
    // against the model its config describes before anything is allocated.
    private readonly bool shapesOnly;
    private static readonly Device Meta = new(TorchSharp.DeviceType.META);

    /// <summary>seeds: null for an ordinary model (seed from the config), else one per instance.</summary>
    public Init(DecoderConfig cfg, IReadOnlyList<int>? seeds, bool shapesOnly = false)
    {
        this.cfg = cfg;
        this.shapesOnly = shapesOnly;
        Batched = seeds is not null;
        generators = seeds is null ? [new Generator((ulong)cfg.seed)] : seeds.Select(s => new Generator((ulong)s)).ToArray();
    }

    /// <summary>Whether parameters carry a leading instance dimension.</summary>
    public bool Batched { get; }

    public int Instances => generators.Length;

    /// <summary>Normal(0, init_range) weights, as TransformerLens' default init: shape, or [instances, ..shape].</summary>
    public Parameter Normal(params long[] shape) =>
        shapesOnly ? new(empty(Shape(shape), device: Meta))
        : Batched
            ? new(stack(generators.Select(g => normal(0.0, cfg.InitRange, shape, generator: g)).ToArray()))
            : new(normal(0.0, cfg.InitRange, shape, generator: generators[0]));

    public Parameter Zeros(params long[] shape) => new(shapesOnly ? empty(Shape(shape), device: Meta) : zeros(Shape(shape)));

    public Parameter Ones(params long[] shape) => new(shapesOnly ? empty(Shape(shape), device: Meta) : ones(Shape(shape)));

    private long[] Shape(long[] shape) => Batched ? [Instances, .. shape] : shape;
}
