namespace MechInterp.ToyModels;

/// <summary>What the toy model does to its reconstruction: the paper's ReLU output or the linear baseline.</summary>
public enum ToyActivation
{
    /// <summary>x' = WᵀWx + b.</summary>
    Linear,
    /// <summary>x' = ReLU(WᵀWx + b), the model that can use superposition.</summary>
    Relu,
}

/// <summary>
/// Shape of a batch of toy models trained together: <see cref="Instances"/> independent models, each
/// compressing <see cref="Features"/> (n) features into <see cref="Hidden"/> (m) dimensions.
/// </summary>
public sealed record ToyModelConfig(int Features, int Hidden, int Instances, ToyActivation Activation)
{
    /// <summary>Throws an <see cref="ArgumentException"/> naming the bad size and its value.</summary>
    public void Validate()
    {
        if (Features < 1)
            throw new ArgumentException($"feature count n must be at least 1, got {Features}.");
        if (Hidden < 1)
            throw new ArgumentException($"hidden dimension m must be at least 1, got {Hidden}.");
        // m > n has nothing to compress: superposition is only defined for a bottleneck.
        if (Hidden > Features)
            throw new ArgumentException(
                $"hidden dimension m ({Hidden}) must not exceed the feature count n ({Features}): the toy model is a bottleneck.");
        if (Instances < 1)
            throw new ArgumentException($"instance count must be at least 1, got {Instances}: there is nothing to train.");
    }
}
