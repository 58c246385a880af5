using System.Diagnostics;
using MechInterp.Data;
using MechInterp.Model;
using static TorchSharp.torch;

namespace MechInterp.Training;

/// <summary>Per-step information handed to <see cref="Trainer.OnStep"/> (checkpoints through training, memory checks).</summary>
/// <param name="Losses">The step's training loss per instance (one for an ordinary model).</param>
public sealed record StepInfo(int Step, IReadOnlyList<double> Losses, IReadOnlyList<double> LearningRates, HookedTransformer Model)
{
    /// <summary>The training loss of an ordinary model (instance 0 of a batched one).</summary>
    public double Loss => Losses[0];

    public double LearningRate => LearningRates[0];
}

/// <summary>
/// AdamW with linear warmup and cosine decay, gradient clipping, periodic evaluation, checkpoints, and (with a
/// <see cref="ConvergenceCriterion"/>) the steps each run learned and converged. A batched model trains every
/// instance in one forward and backward: each has its own configuration (seed, data stream, learning rate,
/// weight decay, clip), loss, optimizer state and held-out batch, so instance i trained in the batch takes the
/// steps it would take alone. The same model seeds, training seeds and thread count give bit-for-bit the same
/// run. Each step runs in a dispose scope, so a long run keeps a flat resident set.
/// </summary>
public sealed class Trainer
{
    private readonly HookedTransformer model;
    private readonly ITokenTask task;
    private readonly TrainingConfig[] configs;
    private readonly TrainingConfig shared;

    /// <summary>
    /// One configuration for every instance; instance i of a batched model draws its data from Seed + i.
    /// </summary>
    public Trainer(HookedTransformer model, ITokenTask task, TrainingConfig config)
        : this(model, task, Enumerable.Range(0, model.Instances ?? 1).Select(i => config with { Seed = config.Seed + i }).ToArray()) { }

    /// <summary>
    /// One configuration per instance. They may differ in what keeps shapes (Seed, LearningRate, WarmupSteps,
    /// MinLrRatio, WeightDecay, GradClip) and must agree in everything else.
    /// </summary>
    public Trainer(HookedTransformer model, ITokenTask task, IReadOnlyList<TrainingConfig> configs)
    {
        this.model = model;
        this.task = task;
        // A model trained on a task reads its tokens (ToStrTokens, checkpoints) unless it was given a tokenizer.
        if (model.Tokenizer is null && task is ITokenizer names && names.VocabSize <= model.Config.d_vocab) model.Tokenizer = names;
        int instances = model.Instances ?? 1;
        if (configs.Count != instances)
            throw new ArgumentException($"{configs.Count} training configs for a model of {instances} instance(s); give one per instance", nameof(configs));
        this.configs = configs.Select(c => c.Validate()).ToArray();
        shared = this.configs[0];
        foreach (var (c, i) in this.configs.Select((c, i) => (c, i)))
        {
            var differs = new List<string>();
            void Same<T>(string name, T a, T b) { if (!EqualityComparer<T>.Default.Equals(a, b)) differs.Add($"{name} ({b} vs {a})"); }
            Same(nameof(c.Steps), shared.Steps, c.Steps);
            Same(nameof(c.BatchSize), shared.BatchSize, c.BatchSize);
            Same(nameof(c.Beta1), shared.Beta1, c.Beta1);
            Same(nameof(c.Beta2), shared.Beta2, c.Beta2);
            Same(nameof(c.EvalEvery), shared.EvalEvery, c.EvalEvery);
            Same(nameof(c.EvalBatchSize), shared.EvalBatchSize, c.EvalBatchSize);
            Same(nameof(c.CheckpointPath), shared.CheckpointPath, c.CheckpointPath);
            Same(nameof(c.CheckpointEvery), shared.CheckpointEvery, c.CheckpointEvery);
            Same(nameof(c.Progress), shared.Progress, c.Progress);
            Same(nameof(c.Convergence), shared.Convergence, c.Convergence);
            Same(nameof(c.StopWhenConverged), shared.StopWhenConverged, c.StopWhenConverged);
            if (differs.Count > 0)
                throw new ArgumentException($"training config {i} differs from config 0 in what all instances share: {string.Join(", ", differs)}", nameof(configs));
        }
    }

    /// <summary>
    /// tokens → logits for the default loss and for evaluation (default: the model's forward). An intervention
    /// that must hold in training and evaluation alike (hooks that rewrite the stream) goes here.
    /// </summary>
    public Func<HookedTransformer, Tensor, Tensor> Forward { get; init; } = (m, tokens) => m.forward(tokens);

    /// <summary>
    /// The training loss of a batch: a scalar for an ordinary model, one per instance [instance] for a batched
    /// one. Default: masked next-token cross-entropy of <see cref="Forward"/>'s logits plus the MoE router losses.
    /// </summary>
    public Func<HookedTransformer, TokenBatch, Tensor>? Loss { get; init; }

    /// <summary>
    /// Extra metrics computed at each evaluation on the held-out batch (e.g. loss on the repeat): each value a
    /// scalar tensor, or one per instance [instance] for a batched model.
    /// </summary>
    public Func<HookedTransformer, TokenBatch, IReadOnlyDictionary<string, Tensor>>? Metrics { get; init; }

    /// <summary>Called after every step with the model as it is after the update.</summary>
    public Action<StepInfo>? OnStep { get; init; }

    /// <summary>Masked next-token cross-entropy of the model's logits plus the MoE router losses (scalar, or [instance]).</summary>
    public static Tensor DefaultLoss(HookedTransformer m, TokenBatch batch) => LossOf(m, batch, m.forward(batch.Tokens));

    private static Tensor LossOf(HookedTransformer m, TokenBatch batch, Tensor logits)
    {
        var loss = Losses.Masked(logits, batch.Tokens, batch.LossMask);
        return m.AuxiliaryLoss is { } aux ? loss.add(aux) : loss;
    }

    /// <summary>The held-out batch of a data seed (instance i's, in a batched run): disjoint in seed from its training stream.</summary>
    public static int EvalSeed(int dataSeed) => unchecked(dataSeed * 7919 + 1);

    /// <summary>
    /// Trains. On the default thread setting a step too small for intra-op threads (<see cref="Settings.ThreadsForStep"/>)
    /// runs on one thread, so a small model is never slower than on one thread; a chosen setting is used as given.
    /// </summary>
    public TrainingResult Run()
    {
        double parameters = model.parameters().Sum(p => (double)p.numel());
        double work = parameters * shared.BatchSize * task.SequenceLength;
        return Settings.RunOnThreads(Settings.ThreadsForStep(work), Train);
    }

    private TrainingResult Train()
    {
        int n = configs.Length;
        var streams = configs.Select(c => new Random(c.Seed)).ToArray();
        using var evalBatch = Sample(shared.EvalBatchSize, configs.Select(c => new Random(EvalSeed(c.Seed))).ToArray());
        using var optimizer = new InstanceAdamW(model.parameters(), model.Instances, shared.Beta1, shared.Beta2)
        {
            WeightDecays = configs.Select(c => c.WeightDecay).ToArray(),
        };
        var clips = configs.Select(c => c.GradClip).ToArray();
        var histories = Enumerable.Range(0, n).Select(_ => new List<LossPoint>(shared.Steps)).ToArray();
        var evals = Enumerable.Range(0, n).Select(_ => new List<EvalPoint>()).ToArray();
        var convergence = new ConvergenceRecord?[n];
        var diverged = new int?[n];
        var progress = new Progress(shared.Steps, shared.Progress);
        string? lastGood = null;
        long tokensSeen = 0;
        int stepsRun = 0;
        var clock = Stopwatch.StartNew();
        model.train();
        for (int step = 1; step <= shared.Steps; step++)
        {
            using var scope = NewDisposeScope();
            var lrs = configs.Select((c, i) => diverged[i] is null ? c.LearningRateAt(step) : 0.0).ToArray();
            optimizer.LearningRates = lrs;
            using var batch = Sample(shared.BatchSize, streams);
            optimizer.ZeroGrad();
            var loss = Loss is { } custom ? custom(model, batch) : LossOf(model, batch, Forward(model, batch.Tokens));
            var values = LossValues(loss, n);
            for (int i = 0; i < n; i++)
                if (!double.IsFinite(values[i]) && diverged[i] is null)
                {
                    diverged[i] = step;
                    lrs[i] = 0.0;
                }
            optimizer.LearningRates = lrs;
            if (diverged.All(d => d is not null))
                throw new TrainingDivergedException(step, values.First(v => !double.IsFinite(v)), lastGood);
            // Save before the update: these weights produced a finite loss.
            if (shared.CheckpointEvery > 0 && step % shared.CheckpointEvery == 0)
            {
                model.Save(shared.CheckpointPath!);
                lastGood = shared.CheckpointPath;
            }
            loss.sum().backward();
            // A diverged instance is frozen: zero gradient, learning rate 0 (its weights stay the last finite ones).
            optimizer.FreezeGradients(Enumerable.Range(0, n).Where(i => diverged[i] is not null).ToArray());
            if (clips.Any(c => c > 0)) optimizer.ClipGradNorms(clips);
            optimizer.Step();

            stepsRun = step;
            Native.Allocator.AfterStep(step);   // a flat resident set over a long run
            tokensSeen += batch.Tokens.numel();
            for (int i = 0; i < n; i++) histories[i].Add(new LossPoint(step, values[i], lrs[i]));
            if (shared.EvalEvery > 0 && (step % shared.EvalEvery == 0 || step == shared.Steps))
            {
                var points = Evaluate(step, evalBatch);
                for (int i = 0; i < n; i++)
                {
                    evals[i].Add(points[i]);
                    if (shared.Convergence is { } criterion) convergence[i] = criterion.Judge(evals[i]);
                }
            }
            OnStep?.Invoke(new StepInfo(step, values, lrs, model));
            progress.Report(step, values.Where(double.IsFinite).DefaultIfEmpty(double.NaN).Average(), tokensSeen / clock.Elapsed.TotalSeconds,
                            shared.Convergence is null ? null : convergence.Count(c => c?.Converged == true));
            if (shared.Convergence is not null && shared.StopWhenConverged
                && Enumerable.Range(0, n).All(i => convergence[i]?.Converged == true || diverged[i] is not null))
                break;
        }
        progress.Done();
        double seconds = clock.Elapsed.TotalSeconds;
        var runs = Enumerable.Range(0, n)
            .Select(i => new InstanceRun(i, configs[i].Seed, histories[i], evals[i],
                                         shared.Convergence is null ? null : convergence[i] ?? new ConvergenceRecord(null, null), diverged[i]))
            .ToArray();
        return new TrainingResult(runs, stepsRun, seconds, tokensSeen / seconds);
    }

    /// <summary>One batch per instance, each from its own stream, stacked for a batched model.</summary>
    private TokenBatch Sample(int size, Random[] streams)
    {
        if (!model.IsBatched) return task.Sample(size, streams[0]);
        var parts = streams.Select(r => task.Sample(size, r)).ToArray();
        try { return TokenBatch.Stack(parts); }
        finally { foreach (var p in parts) p.Dispose(); }
    }

    /// <summary>A loss (scalar, or [instance] for a batched model) as one value per instance.</summary>
    private double[] LossValues(Tensor loss, int n)
    {
        if (model.IsBatched)
        {
            if (loss.dim() != 1 || loss.shape[0] != n)
                throw new InvalidOperationException($"the loss of a batched model must be one value per instance [{n}], got [{string.Join(", ", loss.shape)}]");
        }
        else if (loss.numel() != 1)
            throw new InvalidOperationException($"the loss of an ordinary model must be a scalar, got [{string.Join(", ", loss.shape)}]");
        return loss.detach().to(ScalarType.Float64).reshape(-1).data<double>().ToArray();
    }

    private EvalPoint[] Evaluate(int step, TokenBatch batch)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        model.eval();
        try
        {
            int n = configs.Length;
            var logits = Forward(model, batch.Tokens);
            var loss = LossValues(Losses.Masked(logits, batch.Tokens, batch.LossMask), n);
            var metrics = (Metrics?.Invoke(model, batch) ?? new Dictionary<string, Tensor>())
                .ToDictionary(kv => kv.Key, kv => MetricValues(kv.Key, kv.Value, n));
            return Enumerable.Range(0, n)
                .Select(i => new EvalPoint(step, loss[i], metrics.ToDictionary(kv => kv.Key, kv => kv.Value[i])))
                .ToArray();
        }
        finally { model.train(); }
    }

    private double[] MetricValues(string name, Tensor value, int n)
    {
        if (value.numel() != n || (model.IsBatched && value.dim() != 1))
            throw new InvalidOperationException($"metric '{name}' must be {(model.IsBatched ? $"one value per instance [{n}]" : "a scalar")}, got [{string.Join(", ", value.shape)}]");
        return value.detach().to(ScalarType.Float64).reshape(-1).data<double>().ToArray();
    }
}
