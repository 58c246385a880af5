using MechInterp.Data;
using MechInterp.Model;
using MechInterp.Training;
using static TorchSharp.torch;

namespace MechInterp.Tests;

/// <summary>The tiny-scale versions of the learning targets: they fail if the model or trainer cannot learn.</summary>
public class ConvergenceTests
{
    [Fact]
    public void TwoLayerAttentionOnlyModelLearnsInduction()
    {
        var task = new InductionTask(vocabSize: 64, maxRepeat: 16, minRepeat: 8);
        using var model = new HookedTransformer(new DecoderConfig
        {
            d_model = 64, n_layers = 2, n_heads = 4, attn_only = true, positional_embedding_type = "rotary",
            d_vocab = task.VocabSize, n_ctx = task.SequenceLength, seed = 0,
        });
        // The repeat's length and offset vary, so only a previous-token → induction circuit predicts it; it forms
        // near step 1,200 here (the repeat loss sits above 2.3 nats before).
        new Trainer(model, task, new TrainingConfig { Steps = 2000, BatchSize = 32, LearningRate = 1e-3, EvalEvery = 0, Progress = false }).Run();

        using var scope = NewDisposeScope();
        using var _ = no_grad();
        using var batch = task.Sample(128, new Random(99));
        var logits = model.forward(batch.Tokens);
        double repeated = Losses.Masked(logits, batch.Tokens, InductionTask.RepeatMask(batch)).item<float>();
        Assert.True(repeated < 1.0, $"loss on the repeat is {repeated:F3} nats after 2000 steps");
    }

    [Fact]
    public void OneLayerModelFitsModularAdditionTrainingSet()
    {
        var task = new ModularAddition(p: 113, trainFraction: 0.3, splitSeed: 0);
        using var model = new HookedTransformer(new DecoderConfig
        {
            d_model = 128, n_layers = 1, n_heads = 4, d_mlp = 512, act_fn = "relu", normalization_type = "none",
            d_vocab = task.VocabSize, n_ctx = 4, seed = 0,
        });
        new Trainer(model, task, new TrainingConfig
        {
            Steps = 300, BatchSize = 512, LearningRate = 1e-2, WeightDecay = 0.01, WarmupSteps = 20, EvalEvery = 0, Progress = false,
        }).Run();

        using var scope = NewDisposeScope();
        using var _ = no_grad();
        using var train = task.All(trainSet: true);
        double accuracy = Losses.Accuracy(model.forward(train.Tokens), train.Tokens, train.LossMask);
        Assert.True(accuracy >= 0.99, $"train accuracy {accuracy:P2} on {task.TrainSize} pairs after 300 steps");
    }
}
