using MechInterp.Data;
using MechInterp.Model;
using MechInterp.Training;
using static TorchSharp.torch;

namespace MechInterp.Tests;

/// <summary>Learned means the threshold is met; converged means learned and then flat. Neither is ever granted for free.</summary>
public class ConvergenceCriterionTests
{
    private static readonly ConvergenceCriterion RepeatUnderOneNat = new()
    {
        Metric = "repeat_loss", Threshold = 1.0, Window = 300, RelativeTolerance = 0.02, AbsoluteTolerance = 0.005,
    };

    /// <summary>Evaluations every 100 steps with the held-out loss and a repeat loss given per step.</summary>
    private static List<EvalPoint> Curve(Func<int, double> loss, Func<int, double> repeat, int steps) =>
        Enumerable.Range(1, steps / 100)
            .Select(j => new EvalPoint(100 * j, loss(100 * j), new Dictionary<string, double> { ["repeat_loss"] = repeat(100 * j) }))
            .ToList();

    [Fact]
    public void APlateauBeforeThePhaseChangeIsNeitherLearnedNorConverged()
    {
        // The induction plateau: the loss drifts 3.99 → 3.52 over steps 300–1,100 and is flat for long stretches, the
        // repeat loss stays above 2: flat is not converged when nothing has been learned.
        var evals = Curve(s => s < 300 ? 4.2 : s <= 1100 ? 3.99 - 0.47 * (s - 300) / 800 : 3.52, _ => 2.5, 3000);
        var record = RepeatUnderOneNat.Judge(evals);
        Assert.False(record.Learned);
        Assert.False(record.Converged);
        Assert.Null(record.ConvergedStep);
    }

    [Fact]
    public void LearnedAtThePhaseChangeAndConvergedOnceFlatForAWholeWindowAfterIt()
    {
        // Falls at step 1,200 to 1.2 (repeat 0.5), keeps improving until 1,800, flat after.
        double Loss(int s) => s < 1200 ? 3.5 : s < 1800 ? 1.2 - 0.3 * (s - 1200) / 600 : 0.9;
        double Repeat(int s) => s < 1200 ? 2.5 : 0.5;
        var record = RepeatUnderOneNat.Judge(Curve(Loss, Repeat, 3000));
        Assert.Equal(1200, record.LearnedStep);
        // Windows ending before 2,100 still contain part of the descent of 0.3 nats (far above 2% + 0.005).
        Assert.Equal(2100, record.ConvergedStep);
    }

    [Fact]
    public void StillImprovingAfterLearningIsNotConverged()
    {
        var record = RepeatUnderOneNat.Judge(Curve(s => 2.0 - s / 2000.0, s => s >= 500 ? 0.8 : 1.5, 3000));
        Assert.Equal(500, record.LearnedStep);
        Assert.Null(record.ConvergedStep);
    }

    [Fact]
    public void AMetricThatLearnsByRisingUsesHigherIsBetter()
    {
        var criterion = new ConvergenceCriterion { Metric = "accuracy", Threshold = 0.9, HigherIsBetter = true, Window = 200 };
        var evals = Enumerable.Range(1, 10).Select(j => new EvalPoint(100 * j, 1.0, new Dictionary<string, double> { ["accuracy"] = j >= 4 ? 0.95 : 0.5 })).ToList();
        Assert.Equal(new ConvergenceRecord(400, 600), criterion.Judge(evals));
        var missing = Assert.Throws<KeyNotFoundException>(() => RepeatUnderOneNat.Judge([new EvalPoint(1, 1.0, new Dictionary<string, double>())]));
        Assert.Contains("'repeat_loss' is not among the evaluation's metrics", missing.Message);
        var bad = Assert.Throws<ArgumentException>(() => new TrainingConfig { Convergence = criterion, EvalEvery = 0 }.Validate());
        Assert.Contains("EvalEvery is 0", bad.Message);
        Assert.Contains("Window must be positive, got 0", Assert.Throws<ArgumentException>(() => (criterion with { Window = 0 }).Validate()).Message);
    }

    [Fact]
    public void TrainingReportsAnUnlearnableRunAsNotConvergedAndALearnableOneAsConvergedAndStopsEarly()
    {
        // Two instances of one batch: the first trains normally on modular addition's training set, the second
        // has a learning rate so small that its loss cannot reach the threshold within the cap.
        var task = new ModularAddition(p: 23, trainFraction: 1.0, splitSeed: 0);
        var cfg = new DecoderConfig
        {
            d_model = 64, n_layers = 1, n_heads = 4, d_mlp = 256, act_fn = "relu", normalization_type = "none",
            d_vocab = task.VocabSize, n_ctx = 4,
        };
        var criterion = new ConvergenceCriterion { Metric = "accuracy", Threshold = 0.99, HigherIsBetter = true, Window = 100 };
        var baseConfig = new TrainingConfig
        {
            Steps = 1500, BatchSize = 256, LearningRate = 1e-2, WarmupSteps = 20, MinLrRatio = 1.0, EvalEvery = 25,
            EvalBatchSize = 256, Convergence = criterion, Progress = false,
        };
        using var batched = HookedTransformer.Batched(cfg, [0, 1]);
        var trainer = new Trainer(batched, task, [baseConfig, baseConfig with { LearningRate = 1e-7, Seed = 1 }])
        {
            Metrics = (m, b) => new Dictionary<string, Tensor> { ["accuracy"] = Accuracy(m.forward(b.Tokens), b) },
        };
        var result = trainer.Run();
        Assert.True(result.Runs[0].Convergence!.Converged, $"the trained instance did not converge: {result.Runs[0].Convergence}");
        Assert.False(result.Runs[1].Convergence!.Learned);
        Assert.False(result.Runs[1].Convergence!.Converged);
        // The unlearnable instance keeps the batch running to the cap: no early stop while one has not converged.
        Assert.Equal(1500, result.StepsRun);

        // Alone, the learnable one stops once converged, well before the cap.
        using var alone = new HookedTransformer(cfg);
        var single = new Trainer(alone, task, baseConfig)
        {
            Metrics = (m, b) => new Dictionary<string, Tensor> { ["accuracy"] = Accuracy(m.forward(b.Tokens), b) },
        }.Run();
        var record = single.Runs[0].Convergence!;
        Assert.True(record.Converged);
        Assert.Equal(record.ConvergedStep, single.StepsRun);
        Assert.True(single.StepsRun < 1500);
    }

    /// <summary>Per instance: the share of masked positions where the argmax is the next token → [instance] (or a scalar).</summary>
    private static Tensor Accuracy(Tensor logits, TokenBatch batch)
    {
        long pos = logits.shape[^2];
        var correct = logits.narrow(-2, 0, pos - 1).argmax(-1).eq(batch.Tokens.narrow(-1, 1, pos - 1)).logical_and(batch.LossMask).to(ScalarType.Float32);
        var counted = batch.LossMask.to(ScalarType.Float32);
        return logits.dim() == 4 ? correct.sum([1L, 2L]).div(counted.sum([1L, 2L])) : correct.sum().div(counted.sum());
    }
}
