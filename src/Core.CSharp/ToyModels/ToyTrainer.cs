using System.Diagnostics;
using static TorchSharp.torch;

namespace MechInterp.ToyModels;

/// <summary>
/// How a toy model is trained. Defaults are the paper's notebook: AdamW, lr 1e-3, weight decay 0.01
/// (PyTorch's AdamW default, which the notebook leaves in place), 10,000 steps of 1,024 samples.
/// </summary>
public sealed record ToyTrainingSettings
{
    public int Steps { get; init; } = 10_000;
    public int BatchSize { get; init; } = 1024;
    public double LearningRate { get; init; } = 1e-3;
    public double WeightDecay { get; init; } = 0.01;
    /// <summary>Seeds the model's initial weights; the data stream uses <c>Seed + 1</c>.</summary>
    public long Seed { get; init; }
    /// <summary>A progress line every this many steps (0: none).</summary>
    public int LogEvery { get; init; }
    /// <summary>Where progress lines go.</summary>
    public Action<string>? Log { get; init; }

    /// <summary>Throws an <see cref="ArgumentException"/> naming the bad setting and its value.</summary>
    public void Validate()
    {
        if (Steps < 1) throw new ArgumentException($"Steps must be at least 1, got {Steps}.");
        if (BatchSize < 1) throw new ArgumentException($"BatchSize must be at least 1, got {BatchSize}.");
        if (!(LearningRate > 0.0) || double.IsInfinity(LearningRate))
            throw new ArgumentException($"LearningRate must be positive and finite, got {LearningRate}.");
        if (!(WeightDecay >= 0.0)) throw new ArgumentException($"WeightDecay must be non-negative, got {WeightDecay}.");
        if (LogEvery < 0) throw new ArgumentException($"LogEvery must be non-negative, got {LogEvery}.");
    }
}

/// <summary>The outcome of a run: the trained model and each instance's loss averaged over the last steps.</summary>
public sealed record ToyTrainingResult(ToyModel Model, double[] FinalLoss, TimeSpan Elapsed);

/// <summary>Trains all instances of a <see cref="ToyModel"/> together on importance-weighted reconstruction.</summary>
public static class ToyTrainer
{
    /// <summary>
    /// Builds a model from <paramref name="config"/> and trains it on <see cref="SyntheticFeatures"/>.
    /// <paramref name="importance"/> is one row of n weights per instance; <paramref name="sparsity"/> one S per instance.
    /// </summary>
    public static ToyTrainingResult Train(ToyModelConfig config, double[][] importance, double[] sparsity, ToyTrainingSettings settings)
    {
        SyntheticFeatures.ValidateSparsity(sparsity);
        config.Validate();
        if (sparsity.Length != config.Instances)
            throw new ArgumentException($"{sparsity.Length} sparsities given for {config.Instances} instances; give one per instance.");
        settings.Validate();
        var model = new ToyModel(config, settings.Seed);
        using var data = new SyntheticFeatures(config.Features, sparsity, settings.Seed + 1);
        return Train(model, importance, _ => data.Sample(settings.BatchSize), settings);
    }

    /// <summary>
    /// Trains an existing model on batches from <paramref name="sampleBatch"/> (step → [instances, batch, n]).
    /// Loss per instance: Σ_i I_i (x_i − x'_i)², averaged over the batch; the instances' losses are summed,
    /// so each instance's gradient, and with AdamW's per-element update its whole trajectory, is its own.
    /// </summary>
    public static ToyTrainingResult Train(ToyModel model, double[][] importance, Func<int, Tensor> sampleBatch, ToyTrainingSettings settings)
    {
        settings.Validate();
        var config = model.Config;
        using var weights = ImportanceTensor(importance, config);    // [instances, 1, n]
        using var optimizer = optim.AdamW(model.parameters(), lr: settings.LearningRate, weight_decay: settings.WeightDecay);
        int window = Math.Max(1, Math.Min(100, settings.Steps / 10));
        var lossSum = new double[config.Instances];
        var clock = Stopwatch.StartNew();
        for (int step = 0; step < settings.Steps; step++)
        {
            using var scope = NewDisposeScope();
            var x = sampleBatch(step);                         // [instances, batch, n]
            var reconstruction = model.forward(x);             // [instances, batch, n]
            var perInstance = reconstruction.sub(x).pow_(2).mul_(weights).sum(2).mean([1L]); // [instances]
            optimizer.zero_grad();
            perInstance.sum().backward();
            optimizer.step();
            if (step >= settings.Steps - window)
            {
                var values = perInstance.detach().to(float64).data<double>().ToArray();
                for (int k = 0; k < values.Length; k++) lossSum[k] += values[k];
            }
            if (settings.LogEvery > 0 && settings.Log is not null && (step + 1) % settings.LogEvery == 0)
                settings.Log($"step {step + 1}/{settings.Steps}: mean loss {perInstance.mean().item<float>():g4} ({clock.Elapsed.TotalSeconds:F1} s)");
        }
        return new ToyTrainingResult(model, lossSum.Select(s => s / window).ToArray(), clock.Elapsed);
    }

    private static Tensor ImportanceTensor(double[][] importance, ToyModelConfig config)
    {
        if (importance.Length != config.Instances)
            throw new ArgumentException($"{importance.Length} importance rows given for {config.Instances} instances; give one per instance.");
        for (int k = 0; k < importance.Length; k++)
        {
            if (importance[k].Length != config.Features)
                throw new ArgumentException($"importance row {k} has {importance[k].Length} weights for n = {config.Features} features.");
            foreach (var w in importance[k])
                if (!(w >= 0.0) || double.IsInfinity(w))
                    throw new ArgumentException($"importance row {k} has weight {w}; weights must be finite and non-negative.");
        }
        var flat = importance.SelectMany(row => row.Select(w => (float)w)).ToArray();
        return tensor(flat).reshape(config.Instances, 1, config.Features);
    }
}
