namespace MechInterp.Training;

/// <summary>Optimizer, schedule and bookkeeping for one run. Defaults suit the small synthetic tasks.</summary>
public sealed record TrainingConfig
{
    public int Steps { get; init; } = 1000;
    public int BatchSize { get; init; } = 32;
    public double LearningRate { get; init; } = 1e-3;
    public double WeightDecay { get; init; } = 0.01;
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.99;
    /// <summary>Linear warmup from 0 over this many steps, then cosine decay to MinLrRatio × LearningRate.</summary>
    public int WarmupSteps { get; init; } = 50;
    public double MinLrRatio { get; init; } = 0.1;
    /// <summary>Global gradient-norm clip; 0 disables it.</summary>
    public double GradClip { get; init; } = 1.0;
    /// <summary>Seeds the data order; the model's own seed (DecoderConfig.seed) fixes its initialization.</summary>
    public int Seed { get; init; }
    /// <summary>Evaluate every N steps (and at the end) on a fixed held-out batch; 0 disables evaluation.</summary>
    public int EvalEvery { get; init; } = 100;
    public int EvalBatchSize { get; init; } = 64;
    /// <summary>Where to keep the last good checkpoint, saved every CheckpointEvery steps; null for none.</summary>
    public string? CheckpointPath { get; init; }
    public int CheckpointEvery { get; init; } = 0;
    /// <summary>Show progress (a bar on a terminal, periodic lines otherwise).</summary>
    public bool Progress { get; init; } = true;
    /// <summary>
    /// When set, every evaluation judges each run learned / converged (EvalEvery must be positive), and the result
    /// records the steps. Steps stays the cap.
    /// </summary>
    public ConvergenceCriterion? Convergence { get; init; }
    /// <summary>
    /// With a criterion: stop once every instance has converged. An instance that converges before the others
    /// goes on training with them until then (or the cap); its converged step is the one recorded.
    /// </summary>
    public bool StopWhenConverged { get; init; } = true;

    public TrainingConfig Validate()
    {
        var problems = new List<string>();
        if (Steps <= 0) problems.Add($"Steps must be positive, got {Steps}");
        if (BatchSize <= 0) problems.Add($"BatchSize must be positive, got {BatchSize}");
        if (!(LearningRate > 0) || double.IsInfinity(LearningRate)) problems.Add($"LearningRate must be positive and finite, got {LearningRate}");
        if (WeightDecay < 0 || double.IsNaN(WeightDecay)) problems.Add($"WeightDecay must be non-negative, got {WeightDecay}");
        if (WarmupSteps < 0) problems.Add($"WarmupSteps must be non-negative, got {WarmupSteps}");
        if (MinLrRatio < 0 || MinLrRatio > 1 || double.IsNaN(MinLrRatio)) problems.Add($"MinLrRatio must be in [0, 1], got {MinLrRatio}");
        if (GradClip < 0 || double.IsNaN(GradClip)) problems.Add($"GradClip must be non-negative, got {GradClip}");
        if (EvalEvery < 0) problems.Add($"EvalEvery must be non-negative, got {EvalEvery}");
        if (EvalBatchSize <= 0) problems.Add($"EvalBatchSize must be positive, got {EvalBatchSize}");
        if (CheckpointEvery < 0) problems.Add($"CheckpointEvery must be non-negative, got {CheckpointEvery}");
        if (CheckpointEvery > 0 && string.IsNullOrEmpty(CheckpointPath)) problems.Add($"CheckpointEvery is {CheckpointEvery} but CheckpointPath is not set");
        if (Convergence is not null && EvalEvery <= 0) problems.Add($"a Convergence criterion is judged at evaluations, but EvalEvery is {EvalEvery}");
        if (Convergence is not null)
        {
            try { Convergence.Validate(); }
            catch (ArgumentException e) { problems.Add(e.Message); }
        }
        if (problems.Count > 0) throw new ArgumentException("invalid TrainingConfig: " + string.Join("; ", problems));
        return this;
    }

    /// <summary>The learning rate at a 1-based step: linear warmup, then cosine decay.</summary>
    public double LearningRateAt(int step)
    {
        if (WarmupSteps > 0 && step <= WarmupSteps) return LearningRate * step / WarmupSteps;
        double progress = Steps <= WarmupSteps ? 1.0 : (double)(step - WarmupSteps) / (Steps - WarmupSteps);
        double cosine = 0.5 * (1 + Math.Cos(Math.PI * Math.Clamp(progress, 0, 1)));
        return LearningRate * (MinLrRatio + (1 - MinLrRatio) * cosine);
    }
}

/// <summary>One training step's record.</summary>
public sealed record LossPoint(int Step, double Loss, double LearningRate);

/// <summary>One evaluation: the loss on the fixed held-out batch plus any task metrics.</summary>
public sealed record EvalPoint(int Step, double Loss, IReadOnlyDictionary<string, double> Metrics);

/// <summary>
/// One instance's run: its data seed, training loss at every step, evaluations, whether and when it learned and
/// converged (with a criterion), and the step its loss stopped being finite (it was frozen from then on).
/// </summary>
public sealed record InstanceRun(int Instance, int DataSeed, IReadOnlyList<LossPoint> History, IReadOnlyList<EvalPoint> Evals,
                                 ConvergenceRecord? Convergence, int? DivergedAt)
{
    public double FinalLoss => History[^1].Loss;
}

/// <summary>What a run returns: every instance's history as values (one for an ordinary model), for plots and reports.</summary>
public sealed record TrainingResult(IReadOnlyList<InstanceRun> Runs, int StepsRun, double Seconds, double TokensPerSecond)
{
    private InstanceRun Only => Runs.Count == 1 ? Runs[0]
        : throw new InvalidOperationException($"this result holds {Runs.Count} instances; read Runs[i]");

    /// <summary>The training loss per step of an ordinary model (one instance).</summary>
    public IReadOnlyList<LossPoint> History => Only.History;

    public IReadOnlyList<EvalPoint> Evals => Only.Evals;

    public double FinalLoss => Only.FinalLoss;
}

/// <summary>The loss became NaN or infinite (in every instance of a batched model); the last good checkpoint (if any) is untouched.</summary>
public sealed class TrainingDivergedException(int step, double loss, string? lastGoodCheckpoint)
    : Exception($"training diverged: loss is {loss} at step {step}; " +
                (lastGoodCheckpoint is null ? "no checkpoint was saved" : $"the last good checkpoint is {lastGoodCheckpoint}"))
{
    public int Step { get; } = step;
    public string? LastGoodCheckpoint { get; } = lastGoodCheckpoint;
}
