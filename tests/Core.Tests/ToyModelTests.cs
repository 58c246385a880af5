using MechInterp.ToyModels;
using TorchSharp;
using static TorchSharp.torch;

namespace MechInterp.Tests;

/// <summary>The batched toy-model trainer: instances are independent, and bad settings are named.</summary>
public class ToyModelTests
{
    private static double[][] Importance(int instances, int n) =>
        Enumerable.Range(0, instances)
            .Select(k => Enumerable.Range(0, n).Select(i => Math.Pow(0.9, i) * (k + 1)).ToArray())
            .ToArray();

    [Fact]
    public void BatchedTrainingEqualsTrainingEachInstanceAlone()
    {
        const int n = 5, m = 2, instances = 3, batch = 64, steps = 150;
        double[] sparsity = [0.0, 0.7, 0.95];
        var importance = Importance(instances, n);
        var settings = new ToyTrainingSettings { Steps = steps, BatchSize = batch, Seed = 3 };
        using var data = new SyntheticFeatures(n, sparsity, seed: 7);
        var batches = Enumerable.Range(0, steps).Select(_ => data.Sample(batch)).ToArray(); // each [instances, batch, n]
        using var batched = new ToyModel(new ToyModelConfig(n, m, instances, ToyActivation.Relu), seed: 3);
        using var w0 = batched.W.detach().clone();   // [instances, m, n], before training moves it
        using var b0 = batched.B.detach().clone();   // [instances, n]

        var together = ToyTrainer.Train(batched, importance, step => batches[step], settings);

        for (int k = 0; k < instances; k++)
        {
            int instance = k;
            using var solo = new ToyModel(w0.narrow(0, k, 1), b0.narrow(0, k, 1), ToyActivation.Relu);
            var alone = ToyTrainer.Train(solo, [importance[k]], step => batches[step].narrow(0, instance, 1), settings);
            using var expected = batched.W.detach().narrow(0, k, 1);
            double diff = (solo.W.detach() - expected).abs().max().item<float>();
            Assert.True(diff < 1e-4, $"instance {k}: W differs by {diff} between batched and solo training");
            Assert.Equal(together.FinalLoss[k], alone.FinalLoss[0], 4);
            // The check has teeth only if training moved W.
            double moved = (solo.W.detach() - w0.narrow(0, k, 1)).abs().max().item<float>();
            Assert.True(moved > 0.05, $"instance {k}: W moved only {moved} in {steps} steps");
        }
        foreach (var t in batches) t.Dispose();
    }

    [Fact]
    public void SyntheticFeaturesHaveTheRequestedDensity()
    {
        using var scope = NewDisposeScope();
        using var data = new SyntheticFeatures(50, [0.0, 0.9, 1.0], seed: 1);
        var x = data.Sample(2000);                               // [3, 2000, 50]
        var density = x.gt(0).to(float32).mean([1L, 2L]);        // [3]
        var d = density.data<float>().ToArray();
        Assert.Equal(1.0, d[0], 2);
        Assert.Equal(0.1, d[1], 2);
        Assert.Equal(0.0, d[2], 6);
        Assert.True(x.max().item<float>() <= 1.0f);
    }

    [Fact]
    public void BadSettingsAreRejectedByName()
    {
        var tooWide = Assert.Throws<ArgumentException>(() => new ToyModelConfig(5, 6, 1, ToyActivation.Relu).Validate());
        Assert.Contains("m (6) must not exceed the feature count n (5)", tooWide.Message);

        var zero = Assert.Throws<ArgumentException>(() => new ToyModelConfig(5, 2, 0, ToyActivation.Relu).Validate());
        Assert.Contains("instance count must be at least 1, got 0", zero.Message);

        var noSparsity = Assert.Throws<ArgumentException>(() => new SyntheticFeatures(5, [], seed: 0));
        Assert.Contains("zero instances", noSparsity.Message);

        var settings = new ToyTrainingSettings { Steps = 1, BatchSize = 4 };
        var config = new ToyModelConfig(5, 2, 2, ToyActivation.Relu);
        var above = Assert.Throws<ArgumentException>(() => ToyTrainer.Train(config, Importance(2, 5), [0.5, 1.5], settings));
        Assert.Contains("sparsity S of instance 1 is 1.5", above.Message);
        var below = Assert.Throws<ArgumentException>(() => ToyTrainer.Train(config, Importance(2, 5), [-0.1, 0.5], settings));
        Assert.Contains("sparsity S of instance 0 is -0.1", below.Message);
        var nan = Assert.Throws<ArgumentException>(() => ToyTrainer.Train(config, Importance(2, 5), [double.NaN, 0.5], settings));
        Assert.Contains("NaN", nan.Message);

        var rows = Assert.Throws<ArgumentException>(() => ToyTrainer.Train(config, Importance(1, 5), [0.5, 0.5], settings));
        Assert.Contains("1 importance rows given for 2 instances", rows.Message);
        var steps = Assert.Throws<ArgumentException>(() => new ToyTrainingSettings { Steps = 0 }.Validate());
        Assert.Contains("Steps must be at least 1, got 0", steps.Message);
    }
}
