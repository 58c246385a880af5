using System.Diagnostics;
using MechInterp.Data;
using MechInterp.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace MechInterp.Training;

/// <summary>Per-step information handed to <see cref="Trainer.OnStep"/> (checkpoints through training, memory checks).</summary>
public sealed record StepInfo(int Step, double Loss, double LearningRate, HookedTransformer Model);

/// <summary>
/// AdamW with linear warmup and cosine decay, gradient clipping, periodic evaluation and checkpoints.
/// The same model seed, training seed and thread count give bit-for-bit the same run.
/// Each step runs in a dispose scope, so a long run keeps a flat resident set.
/// </summary>
public sealed class Trainer(HookedTransformer model, ITokenTask task, TrainingConfig config)
{
    private readonly TrainingConfig cfg = config.Validate();

    /// <summary>The training loss of a batch; default: masked next-token cross-entropy plus the MoE router losses.</summary>
    public Func<HookedTransformer, TokenBatch, Tensor> Loss { get; init; } = DefaultLoss;

    /// <summary>Extra metrics computed at each evaluation on the held-out batch (e.g. loss on the repeat).</summary>
    public Func<HookedTransformer, TokenBatch, IReadOnlyDictionary<string, double>>? Metrics { get; init; }

    /// <summary>Called after every step with the model as it is after the update.</summary>
    public Action<StepInfo>? OnStep { get; init; }

    public static Tensor DefaultLoss(HookedTransformer m, TokenBatch batch)
    {
        var logits = m.forward(batch.Tokens);
        var loss = Losses.Masked(logits, batch.Tokens, batch.LossMask);
        return m.AuxiliaryLoss is { } aux ? loss.add(aux) : loss;
    }

    public TrainingResult Run()
    {
        var data = new Random(cfg.Seed);
        using var evalBatch = task.Sample(cfg.EvalBatchSize, new Random(unchecked(cfg.Seed * 7919 + 1)));
        var optimizer = optim.AdamW(model.parameters(), cfg.LearningRate, cfg.Beta1, cfg.Beta2, weight_decay: cfg.WeightDecay);
        var history = new List<LossPoint>(cfg.Steps);
        var evals = new List<EvalPoint>();
        var progress = new Progress(cfg.Steps, cfg.Progress);
        string? lastGood = null;
        long tokensSeen = 0;
        var clock = Stopwatch.StartNew();
        model.train();
        for (int step = 1; step <= cfg.Steps; step++)
        {
            using var scope = NewDisposeScope();
            double lr = cfg.LearningRateAt(step);
            foreach (var group in optimizer.ParamGroups) group.LearningRate = lr;
            using var batch = task.Sample(cfg.BatchSize, data);
            optimizer.zero_grad();
            var loss = Loss(model, batch);
            double value = loss.item<float>();
            if (!double.IsFinite(value))
                throw new TrainingDivergedException(step, value, lastGood);
            // Save before the update: these weights produced a finite loss.
            if (cfg.CheckpointEvery > 0 && step % cfg.CheckpointEvery == 0)
            {
                model.Save(cfg.CheckpointPath!);
                lastGood = cfg.CheckpointPath;
            }
            loss.backward();
            if (cfg.GradClip > 0) nn.utils.clip_grad_norm_(model.parameters(), cfg.GradClip);
            optimizer.step();

            tokensSeen += batch.Tokens.numel();
            history.Add(new LossPoint(step, value, lr));
            if (cfg.EvalEvery > 0 && (step % cfg.EvalEvery == 0 || step == cfg.Steps))
                evals.Add(Evaluate(step, evalBatch));
            OnStep?.Invoke(new StepInfo(step, value, lr, model));
            progress.Report(step, value, tokensSeen / clock.Elapsed.TotalSeconds);
        }
        progress.Done();
        double seconds = clock.Elapsed.TotalSeconds;
        return new TrainingResult(history, evals, seconds, tokensSeen / seconds);
    }

    private EvalPoint Evaluate(int step, TokenBatch batch)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        model.eval();
        try
        {
            var logits = model.forward(batch.Tokens);
            double loss = Losses.Masked(logits, batch.Tokens, batch.LossMask).item<float>();
            var metrics = Metrics?.Invoke(model, batch) ?? new Dictionary<string, double>();
            return new EvalPoint(step, loss, metrics);
        }
        finally { model.train(); }
    }
}
