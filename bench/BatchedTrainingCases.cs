using MechInterp.Data;
using MechInterp.Model;
using MechInterp.Training;
using static TorchSharp.torch;

namespace MechInterp.Bench;

/// <summary>
/// Seeds trained as one batched model against the same seeds trained one after another; the batched run's
/// model-FLOP rate against the GEMM peak measured in the same run; and the Trainer's default thread choice
/// against one thread. The model is the main job's quick induction model (experiment_1's standard variant).
/// </summary>
internal static class BatchedTrainingCases
{
    private const int Seeds = 5, Steps = 30, Batch = 32;

    private static readonly InductionTask Task = new(vocabSize: 64, maxRepeat: 16, minRepeat: 8);

    private static DecoderConfig Config(int seed) => new()
    {
        d_model = 64, n_layers = 2, n_heads = 8, attn_only = true, positional_embedding_type = "rotary",
        d_vocab = Task.VocabSize, n_ctx = Task.SequenceLength, seed = seed,
    };

    private static TrainingConfig Training(int seed) => new()
    {
        Steps = Steps, BatchSize = Batch, LearningRate = 3e-3, Seed = seed, EvalEvery = 0, Progress = false,
    };

    private static void TrainBatched()
    {
        using var model = HookedTransformer.Batched(Config(0), Enumerable.Range(0, Seeds).ToArray());
        new Trainer(model, Task, Enumerable.Range(0, Seeds).Select(Training).ToArray()).Run();
    }

    private static void TrainOneAfterAnother()
    {
        for (int seed = 0; seed < Seeds; seed++)
        {
            using var model = new HookedTransformer(Config(seed));
            new Trainer(model, Task, Training(seed)).Run();
        }
    }

    private static void TrainOne()
    {
        using var model = new HookedTransformer(Config(0));
        new Trainer(model, Task, Training(0)).Run();
    }

    /// <summary>
    /// Forward and backward FLOPs of one training step of one model: 6 per parameter per token for the
    /// projections and the unembedding (the embedding is a lookup), and 2·2·T²·d_model per layer and sequence
    /// for the scores and the weighted sum, times 3 for the backward.
    /// </summary>
    private static double StepFlops()
    {
        var c = Config(0);
        long t = Task.SequenceLength;
        double matmulParams = c.n_layers * 4.0 * c.d_model * c.d_model + c.d_model * (double)c.d_vocab;
        double perToken = 6 * matmulParams;
        double attention = 3 * c.n_layers * 4.0 * t * t * c.d_model;   // per sequence
        return Batch * (t * perToken + attention);
    }

    public static IEnumerable<BenchResult> Run()
    {
        var ms = Timing.Interleaved([TrainBatched, TrainOneAfterAnother], warmup: 1, repetitions: 5);
        double batched = ms.Median(0);
        Console.WriteLine($"  {Seeds} seeds × {Steps} steps: batched {batched:F0} ms, one after another {ms.Median(1):F0} ms");
        yield return ms.Compare($"train {Seeds} seeds of the quick induction model, batched", 0, "one after another", 1);

        double peak = GemmPeak.Measure();
        double rate = Seeds * Steps * StepFlops() / (batched * 1e6);
        Console.WriteLine($"  batched training: {rate:F1} GFLOP/s model FLOPs against a GEMM peak of {peak:F1} GFLOP/s");
        // Ours: the batched step; baseline: the time the same FLOPs take at the GEMM peak. Speedup = share of the peak.
        double perStep = batched / Steps;
        yield return new BenchResult($"batched training, {Seeds} seeds: share of GEMM peak {peak:F0} GFLOP/s", perStep,
                                     "the step's FLOPs at peak", perStep * rate / peak);

        var threads = Timing.Interleaved([TrainOne, () => Settings.WithThreads(1, () => { TrainOne(); return 0; })], warmup: 1, repetitions: 5);
        Console.WriteLine($"  one model: Trainer default {threads.Median(0) / Steps:F1} ms a step, one thread {threads.Median(1) / Steps:F1} ms a step");
        yield return threads.Compare("train the quick induction model, Trainer default threads", 0, "one thread", 1);
    }
}
