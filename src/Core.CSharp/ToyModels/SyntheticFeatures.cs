using static TorchSharp.torch;

namespace MechInterp.ToyModels;

/// <summary>
/// The paper's synthetic data: each feature is 0 with probability S (its instance's sparsity),
/// else uniform on [0, 1], independently.
/// </summary>
public sealed class SyntheticFeatures : IDisposable
{
    private readonly Tensor density;   // [instances, 1, 1]: 1 − S, broadcast over batch and features
    private readonly Generator generator;

    /// <summary>Number of features n per instance.</summary>
    public int Features { get; }

    /// <summary>One sparsity S ∈ [0, 1] per instance; <paramref name="seed"/> fixes the whole stream.</summary>
    public SyntheticFeatures(int features, IReadOnlyList<double> sparsity, long seed)
    {
        if (features < 1)
            throw new ArgumentException($"feature count n must be at least 1, got {features}.");
        ValidateSparsity(sparsity);
        Features = features;
        density = tensor(sparsity.Select(s => (float)(1.0 - s)).ToArray()).reshape(sparsity.Count, 1, 1);
        generator = new Generator((ulong)seed);
    }

    /// <summary>Throws if there are no instances or any S lies outside [0, 1] (or is NaN).</summary>
    public static void ValidateSparsity(IReadOnlyList<double> sparsity)
    {
        if (sparsity.Count == 0)
            throw new ArgumentException("zero instances: give at least one sparsity S.");
        for (int k = 0; k < sparsity.Count; k++)
            if (!(sparsity[k] >= 0.0 && sparsity[k] <= 1.0))
                throw new ArgumentException($"sparsity S of instance {k} is {sparsity[k]}; it must lie in [0, 1].");
    }

    /// <summary>A fresh batch, [instances, batch, n].</summary>
    public Tensor Sample(int batch)
    {
        long instances = density.shape[0];
        // One uniform draw u per entry: the feature is present when u < 1 − S, and then u / (1 − S) is uniform
        // on [0, 1) and independent of the presence, so one draw does what two would.
        using var u = rand([instances, batch, Features], generator: generator);
        using var keep = u.lt(density);
        using var floor = density.clamp_min(1e-30f);
        return u.div(floor).mul_(keep);   // the quotient is the result: multiplied in place, not disposed
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        density.Dispose();
        generator.Dispose();
    }
}
