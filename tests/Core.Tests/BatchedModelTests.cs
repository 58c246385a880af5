using MechInterp.Data;
using MechInterp.Hooks;
using MechInterp.Model;
using MechInterp.Training;
using static TorchSharp.torch;

namespace MechInterp.Tests;

/// <summary>Seeds trained as one batched model: each instance is the model it would be alone.</summary>
public class BatchedModelTests
{
    private static readonly int[] Seeds = [3, 8, 21];

    public static TheoryData<string> Configs => ["dense", "attn-only rotary", "moe", "result hooks", "rms"];

    private static DecoderConfig Config(string name) => name switch
    {
        "dense" => ModelTests.Tiny(),
        "attn-only rotary" => ModelTests.Tiny(attnOnly: true, pos: "rotary"),
        "moe" => ModelTests.Tiny(experts: 4) with { expert_capacity_factor = 1.25 },
        "result hooks" => ModelTests.Tiny() with { use_attn_result = true },
        "rms" => ModelTests.Tiny(norm: "RMS") with { act_fn = "silu" },
        _ => throw new ArgumentException(name),
    };

    private static double MaxDiff(Tensor a, Tensor b) => (a - b).abs().max().item<float>();

    private static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    [Theory]
    [MemberData(nameof(Configs))]
    public void EachInstanceStartsWithTheWeightsOfTheModelWithItsSeed(string name)
    {
        using var scope = NewDisposeScope();
        var cfg = Config(name);
        using var batched = HookedTransformer.Batched(cfg, Seeds);
        var weights = batched.StateDict();
        for (int i = 0; i < Seeds.Length; i++)
        {
            using var alone = new HookedTransformer(cfg with { seed = Seeds[i] });
            foreach (var (key, p) in alone.StateDict())
                Assert.True(Same(weights[key][i], p), $"{key} of instance {i} differs from the seed-{Seeds[i]} model's");
        }
        // Different seeds give different weights: the comparison above cannot pass by all instances being alike.
        Assert.False(Same(weights["blocks.0.attn.W_Q"][0], weights["blocks.0.attn.W_Q"][1]));
    }

    [Theory]
    [MemberData(nameof(Configs))]
    public void BatchedForwardEqualsEachInstanceAlone(string name)
    {
        using var scope = NewDisposeScope();
        var cfg = Config(name);
        using var batched = HookedTransformer.Batched(cfg, Seeds);
        var tokens = stack(Seeds.Select(s => ModelTests.Tokens(2, 7, cfg.d_vocab, s)).ToArray());   // [instance, batch, pos]
        var logits = batched.forward(tokens);
        Assert.Equal(new long[] { 3, 2, 7, cfg.d_vocab }, logits.shape);
        for (int i = 0; i < Seeds.Length; i++)
        {
            using var alone = batched.Instance(i);
            Assert.Equal(Seeds[i], alone.Config.seed);
            double diff = MaxDiff(logits[i], alone.forward(tokens[i]));
            Assert.True(diff < 1e-5, $"instance {i}: batched and alone logits differ by {diff}");
        }
        // [batch, pos] tokens go to every instance.
        Assert.True(MaxDiff(batched.forward(tokens[0])[2], batched.forward(tokens.narrow(0, 0, 1).expand(3, -1, -1))[2]) == 0);
    }

    [Theory]
    [InlineData("dense")]
    [InlineData("attn-only rotary")]
    [InlineData("moe")]
    public void InstanceTrainedInTheBatchEqualsInstanceTrainedAlone(string name)
    {
        // Different seeds, learning rates and clips per instance; instance 1 gets a loss 1000 times larger so
        // that its gradient norm is clipped hard: clipping over all parameters would shrink the others' steps too.
        var cfg = Config(name);
        var task = new InductionTask(cfg.d_vocab, 5);
        var configs = Seeds.Select((s, i) => new TrainingConfig
        {
            Steps = 25, BatchSize = 4, Seed = 40 + i, LearningRate = 1e-3 * (i + 1), GradClip = i == 2 ? 0 : 0.5,
            WarmupSteps = 5, EvalEvery = 0, Progress = false,
        }).ToArray();
        Tensor Scaled(Tensor loss, int instance) => instance == 1 ? loss.mul(1000) : loss;

        using var batched = HookedTransformer.Batched(cfg with { n_ctx = task.SequenceLength }, Seeds);
        var together = new Trainer(batched, task, configs)
        {
            Loss = (m, b) => Trainer.DefaultLoss(m, b).mul(tensor(new[] { 1f, 1000f, 1f })),
        }.Run();
        for (int i = 0; i < Seeds.Length; i++)
        {
            using var alone = new HookedTransformer(cfg with { n_ctx = task.SequenceLength, seed = Seeds[i] });
            int instance = i;
            var single = new Trainer(alone, task, configs[i]) { Loss = (m, b) => Scaled(Trainer.DefaultLoss(m, b), instance) }.Run();
            var lossesTogether = together.Runs[i].History.Select(p => p.Loss).ToArray();
            var lossesAlone = single.History.Select(p => p.Loss).ToArray();
            double lossDiff = lossesTogether.Zip(lossesAlone, (a, b) => Math.Abs(a - b) / Math.Max(1, Math.Abs(b))).Max();
            Assert.True(lossDiff < 1e-4, $"instance {i}: losses differ by up to {lossDiff:E2} (relative)");
            using var trained = batched.Instance(i);
            using var scope = NewDisposeScope();
            var mine = trained.StateDict();
            // Key biases get an exactly zero gradient (softmax ignores a constant added to a query's scores); Adam
            // scales their float noise into steps, so their values are noise in both runs. Every other weight must agree.
            foreach (var (key, p) in alone.StateDict().Where(kv => !kv.Key.EndsWith("attn.b_K")))
            {
                double diff = MaxDiff(mine[key], p);
                Assert.True(diff < 1e-4, $"instance {i}: {key} differs by {diff:E2} after 25 steps");
            }
            var probe = ModelTests.Tokens(3, task.SequenceLength, cfg.d_vocab, 77);
            double logitDiff = MaxDiff(trained.forward(probe), alone.forward(probe));
            Assert.True(logitDiff < 1e-4, $"instance {i}: trained logits differ by {logitDiff:E2}");
        }
        // The three instances did not take the same steps: the equality is per instance, not trivially shared.
        Assert.NotEqual(together.Runs[0].History[^1].Loss, together.Runs[2].History[^1].Loss);
    }

    [Fact]
    public void HooksSeeTheInstanceDimensionFirstAndMayInterveneInOneInstance()
    {
        using var scope = NewDisposeScope();
        var cfg = Config("dense");
        using var batched = HookedTransformer.Batched(cfg, Seeds);
        var tokens = ModelTests.Tokens(2, 6, cfg.d_vocab, 1);
        var clean = batched.forward(tokens);
        long[]? seen = null;
        // Zero instance 1's residual stream after block 0; the others must not move.
        var hook = new Hook(HookNames.ResidPost(0), (act, _) =>
        {
            seen = act.shape;
            return act.index_fill(0, tensor(1L), 0.0);
        });
        var patched = batched.RunWithHooks(tokens, hook);
        Assert.Equal(new long[] { 3, 2, 6, cfg.d_model }, seen);
        Assert.Equal(0.0, MaxDiff(clean[0], patched[0]));
        Assert.Equal(0.0, MaxDiff(clean[2], patched[2]));
        Assert.True(MaxDiff(clean[1], patched[1]) > 1e-3);
        var (_, cache) = batched.RunWithCache(tokens, n => n == HookNames.Pattern(1));
        using (cache) Assert.Equal(new long[] { 3, 2, 4, 6, 6 }, cache[HookNames.Pattern(1)].shape);
    }

    [Fact]
    public void StackedModelsAndSavedBatchesRoundTrip()
    {
        using var scope = NewDisposeScope();
        var cfg = Config("moe");
        var singles = Seeds.Select(s => new HookedTransformer(cfg with { seed = s })).ToArray();
        using var stacked = HookedTransformer.Stack(singles);
        Assert.Equal(Seeds, stacked.Seeds);
        string path = Path.Combine(Path.GetTempPath(), $"batched-{Guid.NewGuid():N}.safetensors");
        try
        {
            stacked.Save(path);
            using var loaded = HookedTransformer.Load(path);
            Assert.True(loaded.IsBatched);
            Assert.Equal(Seeds, loaded.Seeds);
            var tokens = ModelTests.Tokens(2, 5, cfg.d_vocab, 4);
            Assert.Equal(0.0, MaxDiff(stacked.forward(tokens), loaded.forward(tokens)));
            using var second = loaded.Instance(1);
            Assert.Equal(0.0, MaxDiff(second.forward(tokens), singles[1].forward(tokens)));
        }
        finally
        {
            File.Delete(path);
            foreach (var m in singles) m.Dispose();
        }
    }

    [Fact]
    public void BadInstanceInputsAreNamed()
    {
        using var scope = NewDisposeScope();
        var cfg = Config("dense");
        using var batched = HookedTransformer.Batched(cfg, Seeds);
        var wrongCount = zeros([2, 1, 4], dtype: ScalarType.Int64);
        Assert.Contains("have 2 instances but the model has 3", Assert.Throws<ArgumentException>(() => batched.forward(wrongCount)).Message);
        Assert.Contains("[instance, batch, pos]", Assert.Throws<ArgumentException>(() => batched.forward(zeros([4], dtype: ScalarType.Int64))).Message);
        Assert.Contains("outside [0, 3)", Assert.Throws<ArgumentOutOfRangeException>(() => batched.Instance(3)).Message);
        using var single = new HookedTransformer(cfg);
        Assert.Contains("not batched", Assert.Throws<InvalidOperationException>(() => single.Instance(0)).Message);
        Assert.Contains("seeds is empty", Assert.Throws<ArgumentException>(() => HookedTransformer.Batched(cfg, [])).Message);
        using var other = new HookedTransformer(cfg with { d_mlp = 8 });
        Assert.Contains("differs from model 0's", Assert.Throws<ArgumentException>(() => HookedTransformer.Stack([single, other])).Message);
        var task = new InductionTask(cfg.d_vocab, 5);
        var config = new TrainingConfig { Steps = 3, BatchSize = 2, EvalEvery = 0, Progress = false };
        Assert.Contains("2 training configs for a model of 3",
            Assert.Throws<ArgumentException>(() => new Trainer(batched, task, [config, config])).Message);
        Assert.Contains("BatchSize (4 vs 2)",
            Assert.Throws<ArgumentException>(() => new Trainer(batched, task, [config, config with { BatchSize = 4 }, config])).Message);
    }

    [Fact]
    public void ADivergedInstanceIsFrozenWhileTheOthersTrainOn()
    {
        var cfg = Config("dense");
        var task = new InductionTask(cfg.d_vocab, 5);
        using var batched = HookedTransformer.Batched(cfg with { n_ctx = task.SequenceLength }, Seeds);
        int step = 0;
        Dictionary<string, Tensor>? before = null;
        var result = new Trainer(batched, task, new TrainingConfig { Steps = 12, BatchSize = 2, EvalEvery = 0, Progress = false })
        {
            // Instance 2's loss turns NaN from step 5 on.
            Loss = (m, b) =>
            {
                step++;
                var loss = Trainer.DefaultLoss(m, b);
                return step >= 5 ? loss.mul(tensor(new[] { 1f, 1f, float.NaN })) : loss;
            },
            OnStep = s =>
            {
                if (s.Step == 4) before = s.Model.StateDict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone().DetachFromDisposeScope());
            },
        }.Run();
        Assert.Equal(5, result.Runs[2].DivergedAt);
        Assert.Null(result.Runs[0].DivergedAt);
        Assert.Equal(12, result.StepsRun);
        var after = batched.StateDict();
        foreach (var (key, p) in before!)
        {
            Assert.True(Same(after[key][2], p[2]), $"{key}: the diverged instance moved after step 4");
            Assert.False(after[key][2].isnan().any().item<bool>());
        }
        Assert.False(Same(after["blocks.0.attn.W_Q"][0], before["blocks.0.attn.W_Q"][0]), "instance 0 stopped training too");
    }
}
