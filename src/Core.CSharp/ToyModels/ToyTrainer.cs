using System.Diagnostics;
using MechInterp.Training;
using static TorchSharp.torch;

namespace MechInterp.ToyModels;

/// <summary>
/// How a toy model is trained. Defaults are the paper's notebook: AdamW, lr 1e-3, weight decay 0.01
/// (PyTorch's AdamW default, which the notebook leaves in place), 10,000 steps of 1,024 samples.
/// </summary>
public sealed record ToyTrainingSettings
{
    /// <summary>The step cap.</summary>
    public int Steps { get; init; } = 10_000;
    public int BatchSize { get; init; } = 1024;
    public double LearningRate { get; init; } = 1e-3;
    public double WeightDecay { get; init; } = 0.01;
    /// <summary>Seeds the model's initial weights; the data stream uses <c>Seed + 1</c>.</summary>
    public long Seed { get; init; }
    /// <summary>
    /// Each instance's loss is averaged over windows of this many steps (fresh samples every step, so the mean is a
    /// held-out estimate); convergence is judged on these means.
    /// </summary>
    public int EvalEvery { get; init; } = 100;
    /// <summary>
    /// When set, judges each instance learned (its "loss_ratio", the loss over that of the best model that represents
    /// no feature, at or under the threshold) and converged (then flat), and stops once every instance has converged.
    /// </summary>
    public ConvergenceCriterion? Convergence { get; init; }
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
        if (EvalEvery < 1) throw new ArgumentException($"EvalEvery must be at least 1, got {EvalEvery}.");
        if (LogEvery < 0) throw new ArgumentException($"LogEvery must be non-negative, got {LogEvery}.");
        Convergence?.Validate();
    }
}

/// <summary>
/// The outcome of a run: the trained model, each instance's loss averaged over the last steps, its loss curve
/// (window means), and with a criterion whether and when each learned and converged.
/// </summary>
public sealed record ToyTrainingResult(ToyModel Model, double[] FinalLoss, TimeSpan Elapsed)
{
    /// <summary>Per instance, the mean loss of every EvalEvery-step window (loss_ratio as a metric).</summary>
    public IReadOnlyList<IReadOnlyList<EvalPoint>> Evals { get; init; } = [];
    /// <summary>Per instance, with a criterion; null without one.</summary>
    public IReadOnlyList<ConvergenceRecord>? Convergence { get; init; }
    /// <summary>Steps run: the cap, or fewer when every instance converged first.</summary>
    public int StepsRun { get; init; }
}

/// <summary>
/// Trains all instances of a <see cref="ToyModel"/> together on importance-weighted reconstruction, with the same
/// optimizer as the decoders' batched training (<see cref="InstanceAdamW"/>): every instance's update is its own.
/// </summary>
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
        return Train(model, importance, _ => data.Sample(settings.BatchSize), settings, TrivialLoss(importance, sparsity));
    }

    /// <summary>
    /// The loss of the best model that represents no feature (W = 0, b = E[x]): Σ_i I_i Var(x_i), with
    /// Var(x_i) = p/3 − p²/4 for a feature present with probability p = 1 − S and uniform on [0, 1].
    /// </summary>
    public static double[] TrivialLoss(double[][] importance, double[] sparsity) =>
        importance.Select((row, k) =>
        {
            double p = 1 - sparsity[k];
            return row.Sum() * (p / 3 - p * p / 4);
        }).ToArray();

    /// <summary>
    /// Trains an existing model on batches from <paramref name="sampleBatch"/> (step → [instances, batch, n]).
    /// Loss per instance: Σ_i I_i (x_i − x'_i)², averaged over the batch; the instances' losses are summed,
    /// so each instance's gradient, and with AdamW's per-element update its whole trajectory, is its own.
    /// <paramref name="trivialLoss"/> (per instance) scales the loss into the loss_ratio a criterion reads.
    /// </summary>
    public static ToyTrainingResult Train(ToyModel model, double[][] importance, Func<int, Tensor> sampleBatch, ToyTrainingSettings settings,
                                          double[]? trivialLoss = null)
    {
        settings.Validate();
        var config = model.Config;
        if (settings.Convergence is not null && trivialLoss is null)
            throw new ArgumentException("a convergence criterion reads the loss ratio; pass each instance's trivial loss");
        using var weights = ImportanceTensor(importance, config);    // [instances, 1, n]
        using var optimizer = new InstanceAdamW(model.parameters(), config.Instances, beta1: 0.9, beta2: 0.999)
        {
            LearningRates = Enumerable.Repeat(settings.LearningRate, config.Instances).ToArray(),
            WeightDecays = Enumerable.Repeat(settings.WeightDecay, config.Instances).ToArray(),
        };
        int window = Math.Max(1, Math.Min(100, settings.Steps / 10));
        var lossSum = new double[config.Instances];
        var windowSum = new double[config.Instances];
        var evals = Enumerable.Range(0, config.Instances).Select(_ => new List<EvalPoint>()).ToArray();
        var convergence = new ConvergenceRecord[config.Instances];
        int stepsRun = 0;
        var clock = Stopwatch.StartNew();
        for (int step = 0; step < settings.Steps; step++)
        {
            using var scope = NewDisposeScope();
            var x = sampleBatch(step);                         // [instances, batch, n]
            var reconstruction = model.forward(x);             // [instances, batch, n]
            var perInstance = reconstruction.sub(x).pow_(2).mul_(weights).sum(2).mean([1L]); // [instances]
            optimizer.ZeroGrad();
            perInstance.sum().backward();
            optimizer.Step();
            stepsRun = step + 1;
            Native.Allocator.AfterStep(stepsRun);   // a flat resident set over a long run
            var values = perInstance.detach().to(float64).data<double>().ToArray();
            for (int k = 0; k < values.Length; k++)
            {
                windowSum[k] += values[k];
                if (step >= settings.Steps - window) lossSum[k] += values[k];
            }
            if (stepsRun % settings.EvalEvery == 0)
            {
                for (int k = 0; k < values.Length; k++)
                {
                    double mean = windowSum[k] / settings.EvalEvery;
                    var metrics = new Dictionary<string, double>();
                    if (trivialLoss is not null) metrics["loss_ratio"] = mean / trivialLoss[k];
                    evals[k].Add(new EvalPoint(stepsRun, mean, metrics));
                    windowSum[k] = 0;
                    if (settings.Convergence is { } criterion) convergence[k] = criterion.Judge(evals[k]);
                }
            }
            if (settings.LogEvery > 0 && settings.Log is not null && stepsRun % settings.LogEvery == 0)
                settings.Log($"step {stepsRun}/{settings.Steps}: mean loss {perInstance.mean().item<float>():g4} ({clock.Elapsed.TotalSeconds:F1} s)"
                             + (settings.Convergence is null ? "" : $", {convergence.Count(c => c?.Converged == true)}/{config.Instances} converged"));
            if (settings.Convergence is not null && convergence.All(c => c?.Converged == true))
                break;
        }
        // The final loss is the mean over the last window of steps run.
        var final = stepsRun == settings.Steps
            ? lossSum.Select(s => s / window).ToArray()
            : evals.Select(e => e[^1].Loss).ToArray();
        return new ToyTrainingResult(model, final, clock.Elapsed)
        {
            Evals = evals,
            Convergence = settings.Convergence is null ? null : convergence.Select(c => c ?? new ConvergenceRecord(null, null)).ToArray(),
            StepsRun = stepsRun,
        };
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
