namespace MechInterp.Training;

/// <summary>
/// When a run has learned its task and when it has converged, read at every evaluation on the held-out batch.
/// Learned: the metric reaches its threshold (a level that means the task is solved, such as a repeat loss under
/// 1 nat for induction). Converged: learned, and then flat: over the last <see cref="Window"/> steps, all of them
/// after the run learned, the held-out loss improved by at most RelativeTolerance × its value at the window's
/// start, plus AbsoluteTolerance. A plateau before a phase change is neither: it has not reached the threshold.
/// </summary>
public sealed record ConvergenceCriterion
{
    /// <summary>"loss" (the held-out loss) or the name of a metric the trainer computes at each evaluation.</summary>
    public string Metric { get; init; } = "loss";
    /// <summary>The level that means learned.</summary>
    public double Threshold { get; init; }
    /// <summary>True when a metric learns by rising (an accuracy); false (default) when it learns by falling (a loss).</summary>
    public bool HigherIsBetter { get; init; }
    /// <summary>The stretch over which the held-out loss must stay flat, in steps.</summary>
    public int Window { get; init; } = 500;
    public double RelativeTolerance { get; init; } = 0.02;
    public double AbsoluteTolerance { get; init; } = 0.005;

    public ConvergenceCriterion Validate()
    {
        var problems = new List<string>();
        if (string.IsNullOrWhiteSpace(Metric)) problems.Add("Metric must name a metric (\"loss\" or one of the trainer's metrics)");
        if (!double.IsFinite(Threshold)) problems.Add($"Threshold must be finite, got {Threshold}");
        if (Window <= 0) problems.Add($"Window must be positive, got {Window}");
        if (!(RelativeTolerance >= 0) || double.IsInfinity(RelativeTolerance)) problems.Add($"RelativeTolerance must be finite and non-negative, got {RelativeTolerance}");
        if (!(AbsoluteTolerance >= 0) || double.IsInfinity(AbsoluteTolerance)) problems.Add($"AbsoluteTolerance must be finite and non-negative, got {AbsoluteTolerance}");
        if (problems.Count > 0) throw new ArgumentException("invalid ConvergenceCriterion: " + string.Join("; ", problems));
        return this;
    }

    /// <summary>Whether a metric value means learned.</summary>
    public bool IsLearned(double value) => HigherIsBetter ? value >= Threshold : value <= Threshold;

    /// <summary>One line for reports: what learned and converged mean here.</summary>
    public string Describe() =>
        $"learned: held-out {Metric} {(HigherIsBetter ? "≥" : "≤")} {Threshold:G4}; converged: learned, then the held-out loss improved by at most " +
        $"{RelativeTolerance:P0} (+ {AbsoluteTolerance:G2}) over {Window} steps after learning";

    /// <summary>
    /// Reads a run's evaluations in step order: the first step it learned and the first step it converged
    /// (null when it did neither). Evaluations must be at increasing steps.
    /// </summary>
    public ConvergenceRecord Judge(IReadOnlyList<EvalPoint> evals)
    {
        int? learned = null, converged = null;
        for (int j = 0; j < evals.Count; j++)
        {
            var e = evals[j];
            if (j > 0 && e.Step <= evals[j - 1].Step)
                throw new ArgumentException($"evaluations must be at increasing steps, got step {e.Step} after {evals[j - 1].Step}");
            double value = MetricOf(e);
            if (learned is null && IsLearned(value)) learned = e.Step;
            if (learned is null || converged is not null) continue;
            // The window's start: the latest evaluation at least Window steps back, itself after learning.
            int start = -1;
            for (int i = j - 1; i >= 0 && evals[i].Step >= learned; i--)
                if (e.Step - evals[i].Step >= Window) { start = i; break; }
            if (start < 0 || !IsLearned(value)) continue;
            double before = evals[start].Loss, improvement = before - e.Loss;
            if (improvement <= RelativeTolerance * Math.Abs(before) + AbsoluteTolerance) converged = e.Step;
        }
        return new ConvergenceRecord(learned, converged);
    }

    private double MetricOf(EvalPoint e)
    {
        if (Metric == "loss") return e.Loss;
        if (e.Metrics.TryGetValue(Metric, out double v)) return v;
        throw new KeyNotFoundException($"the convergence metric '{Metric}' is not among the evaluation's metrics ({string.Join(", ", e.Metrics.Keys.Prepend("loss"))})");
    }
}

/// <summary>The step a run first met the learned threshold and the step it converged; null where it did not.</summary>
public sealed record ConvergenceRecord(int? LearnedStep, int? ConvergedStep)
{
    public bool Learned => LearnedStep is not null;
    public bool Converged => ConvergedStep is not null;
}
