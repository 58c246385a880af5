using System.Diagnostics;
using MechInterp.Data;
using MechInterp.Model;
using MechInterp.Training;
using static TorchSharp.torch;

namespace MechInterp.Tests;

public sealed class TrainingTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("mechinterp-train-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    private static HookedTransformer TinyInductionModel(InductionTask task, int seed = 0) => new(new DecoderConfig
    {
        d_model = 32, n_layers = 2, n_heads = 2, attn_only = true, d_vocab = task.VocabSize, n_ctx = task.SequenceLength, seed = seed,
    });

    [Fact]
    public void ScheduleWarmsUpLinearlyThenDecaysByCosine()
    {
        var cfg = new TrainingConfig { Steps = 110, LearningRate = 1.0, WarmupSteps = 10, MinLrRatio = 0.1 };
        Assert.Equal(0.1, cfg.LearningRateAt(1), 12);
        Assert.Equal(1.0, cfg.LearningRateAt(10), 12);
        Assert.Equal(0.55, cfg.LearningRateAt(60), 12);   // halfway through the cosine
        Assert.Equal(0.1, cfg.LearningRateAt(110), 12);
    }

    [Fact]
    public void BadTrainingSettingsAreNamed()
    {
        var e = Assert.Throws<ArgumentException>(() => new TrainingConfig { Steps = 0, LearningRate = -1 }.Validate());
        Assert.Contains("Steps must be positive, got 0", e.Message);
        Assert.Contains("LearningRate must be positive and finite, got -1", e.Message);
    }

    [Fact]
    public void TheSameSeedsGiveBitForBitTheSameRun()
    {
        var task = new InductionTask(16, 6);
        var cfg = new TrainingConfig { Steps = 25, BatchSize = 8, Seed = 5, EvalEvery = 0, Progress = false };
        double[] Run(int dataSeed)
        {
            using var model = TinyInductionModel(task);
            return new Trainer(model, task, cfg with { Seed = dataSeed }).Run().History.Select(p => p.Loss).ToArray();
        }
        var first = Run(5);
        Assert.Equal(first, Run(5));
        Assert.NotEqual(first, Run(6));
    }

    [Fact]
    public void ANaNLossStopsTrainingNamingTheStepAndKeepsTheLastGoodCheckpoint()
    {
        var task = new InductionTask(16, 6);
        string path = Path.Combine(dir, "last-good.safetensors");
        using var model = TinyInductionModel(task);
        var trainer = new Trainer(model, task, new TrainingConfig
        {
            Steps = 20, BatchSize = 4, EvalEvery = 0, Progress = false, CheckpointPath = path, CheckpointEvery = 5,
        })
        {
            Loss = (m, b) => m.forward(b.Tokens).mean().mul(0).add(history++ == 6 ? double.NaN : 1.0),
        };
        var e = Assert.Throws<TrainingDivergedException>(() => trainer.Run());
        Assert.Equal(7, e.Step);
        Assert.Contains("loss is NaN at step 7", e.Message);
        Assert.Equal(path, e.LastGoodCheckpoint);
        using var restored = HookedTransformer.Load(path);
        Assert.Equal(model.Config, restored.Config with { d_head = 0 });
    }

    private int history;
}

/// <summary>RSS is process-wide: this runs alone, so no other test's allocations move it.</summary>
[CollectionDefinition("serial", DisableParallelization = true)]
public class SerialCollection;

[Collection("serial")]
public class MemoryTests
{
    [Fact]
    public void ResidentMemoryStaysFlatOverAThousandSteps()
    {
        var task = new InductionTask(16, 6);
        using var model = new HookedTransformer(new DecoderConfig { d_model = 32, n_layers = 2, n_heads = 2, attn_only = true, d_vocab = task.VocabSize, n_ctx = task.SequenceLength });
        long at100 = 0, at1000 = 0;
        long Rss()
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            using var p = Process.GetCurrentProcess();
            return p.WorkingSet64;
        }
        new Trainer(model, task, new TrainingConfig { Steps = 1000, BatchSize = 8, EvalEvery = 250, Progress = false })
        {
            OnStep = s =>
            {
                if (s.Step == 100) at100 = Rss();
                if (s.Step == 1000) at1000 = Rss();
            },
        }.Run();
        Assert.True(at1000 <= at100 * 1.10, $"RSS grew from {at100 >> 20} MiB at step 100 to {at1000 >> 20} MiB at step 1000");
    }
}
