using MechInterp.Model;
using MechInterp.Training;
using static TorchSharp.torch;

namespace MechInterp.Bench;

/// <summary>
/// One training step of the shipped HookedTransformer (forward, next-token loss plus the router loss, backward,
/// gradient clipping and the Trainer's AdamW), 2-layer d128, dense and MoE (8 experts, top-2, the toy MoE's gate),
/// with native kernels against the same model on their managed twins. The kernels are chosen the way a user chooses
/// them, by <see cref="Settings.Kernels"/>. `dotnet run -- train profile` also prints where the step's time goes.
/// </summary>
internal static class TrainingStep
{
    private const int Vocab = 512, DModel = 128, Heads = 4, DMlp = 512, Experts = 8, TopK = 2, Layers = 2, Batch = 8, Pos = 128;

    private static DecoderConfig Config(bool moe) => new()
    {
        d_model = DModel, n_layers = Layers, n_heads = Heads, d_mlp = DMlp, d_vocab = Vocab, n_ctx = Pos, act_fn = "gelu",
        n_experts = moe ? Experts : 0, experts_per_token = moe ? TopK : 0, seed = 6,
    };

    /// <summary>The step's batch: tokens [batch, pos] and the loss mask [batch, pos − 1], the same for every arm.</summary>
    private static (Tensor Tokens, Tensor Mask) StepBatch()
    {
        manual_seed(5);
        return (randint(0, Vocab, new long[] { Batch, Pos }, dtype: ScalarType.Int64), ones(Batch, Pos - 1, dtype: ScalarType.Bool));
    }

    /// <summary>Median milliseconds of <paramref name="body"/>, each call in its own dispose scope.</summary>
    private static double ScopedMedianMs(Action body, int repetitions) =>
        Timing.MedianMs(() => { using var inner = NewDisposeScope(); body(); }, warmup: 0, repetitions: repetitions);

    public static IEnumerable<BenchResult> Run(bool profile)
    {
        using var scope = NewDisposeScope();
        var (tokens, mask) = StepBatch();
        var previous = Settings.Kernels;
        try
        {
            foreach (bool moe in new[] { false, true })
            {
                using var native = new Stepper(Config(moe), tokens, mask, KernelBackend.Native);
                using var managed = new Stepper(Config(moe), tokens, mask, KernelBackend.Managed);
                var ms = Timing.Interleaved([native.Step, managed.Step], warmup: 2, repetitions: 11);
                string name = moe ? $"train step HookedTransformer 2L d{DModel} MoE E{Experts} top{TopK} B{Batch} T{Pos}"
                                  : $"train step HookedTransformer 2L d{DModel} dense B{Batch} T{Pos}";
                Console.WriteLine($"  {name}: native {ms.Median(0):F1} ms, managed {ms.Median(1):F1} ms");
                if (profile)
                {
                    native.Profile();
                    managed.Profile();
                }
                yield return ms.Compare(name, 0, "managed", 1);
            }
        }
        finally { Settings.Kernels = previous; }
    }

    /// <summary>
    /// Steps one arm for <paramref name="seconds"/> and nothing else, for a sampling profiler:
    /// `perf record -g bench/bin/Release/net10.0/linux-x64/MechInterp.Bench train spin moe native 20`.
    /// </summary>
    public static void Spin(bool moe, KernelBackend backend, double seconds)
    {
        using var scope = NewDisposeScope();
        var (tokens, mask) = StepBatch();
        using var stepper = new Stepper(Config(moe), tokens, mask, backend);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        int steps = 0;
        for (; clock.Elapsed.TotalSeconds < seconds; steps++) stepper.Step();
        Console.WriteLine($"  {steps} steps in {clock.Elapsed.TotalSeconds:F1} s: {clock.Elapsed.TotalMilliseconds / steps:F1} ms a step");
    }

    /// <summary>A model, its optimizer and the kernels it runs on; Step is one training step as the Trainer takes it.</summary>
    private sealed class Stepper : IDisposable
    {
        private readonly HookedTransformer model;
        private readonly InstanceAdamW optimizer;
        private readonly Tensor tokens, mask;
        private readonly KernelBackend backend;

        public Stepper(DecoderConfig config, Tensor tokens, Tensor mask, KernelBackend backend)
        {
            (this.tokens, this.mask, this.backend) = (tokens, mask, backend);
            model = new HookedTransformer(config);
            model.train();
            optimizer = new InstanceAdamW(model.parameters(), null) { LearningRates = [1e-3], WeightDecays = [0.01] };
        }

        public void Step() => Phases(null);

        /// <summary>Median milliseconds of each phase of the step over 11 steps, printed.</summary>
        public void Profile()
        {
            var times = new Dictionary<string, List<double>>();
            for (int i = 0; i < 11; i++) Phases(times);
            Console.WriteLine($"    {backend,-8} " + string.Join(", ", times.Select(kv => $"{kv.Key} {kv.Value.Order().ElementAt(kv.Value.Count / 2):F2}")));
            foreach (var (phase, ms) in Layers()) Console.WriteLine($"      {phase} {ms:F2} ms");
            foreach (var (phase, ms) in MoeLayer()) Console.WriteLine($"      {phase} {ms:F2} ms");
        }

        private void Phases(Dictionary<string, List<double>>? times)
        {
            Settings.Kernels = backend;
            var clock = System.Diagnostics.Stopwatch.StartNew();
            void Mark(string phase)
            {
                if (times is null) return;
                (times.TryGetValue(phase, out var list) ? list : times[phase] = []).Add(clock.Elapsed.TotalMilliseconds);
                clock.Restart();
            }
            using var scope = NewDisposeScope();
            optimizer.ZeroGrad();
            var logits = model.forward(tokens);                                     // [batch, pos, vocab]
            Mark("forward");
            var loss = Losses.Masked(logits, tokens, mask);
            if (model.AuxiliaryLoss is { } aux) loss = loss.add(aux);
            Mark("loss");
            loss.backward();
            Mark("backward");
            optimizer.ClipGradNorms([1.0]);
            optimizer.Step();
            Mark("optimizer");
        }

        /// <summary>The first block's attention and MLP (or MoE) modules alone, forward and backward, in the step's shapes.</summary>
        private IEnumerable<(string, double)> Layers()
        {
            Settings.Kernels = backend;
            using var scope = NewDisposeScope();
            var x = randn(1, Batch, Pos, DModel).requires_grad_(true);                 // [instance, batch, pos, d_model]
            var dy = randn(1, Batch, Pos, DModel);
            var block = model.blocks[0];
            foreach (var (name, layer) in new (string, Func<Tensor, Tensor>)[] { ("attention layer fwd+bwd", block.attn.forward), ("mlp layer fwd+bwd", block.mlp.forward) })
                yield return (name, ScopedMedianMs(() => layer(x).backward([dy]), repetitions: 13));
        }

        /// <summary>For an MoE model: the first MoE layer's forward split into routing and dispatch, forward only.</summary>
        private IEnumerable<(string, double)> MoeLayer()
        {
            if (model.blocks[0].mlp is not Moe moe) yield break;
            Settings.Kernels = backend;
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            var x = randn(1, Batch, Pos, DModel);                                   // [instance, batch, pos, d_model]
            double Median(Action a) => ScopedMedianMs(a, repetitions: 11);
            var weights = x.matmul(moe.W_gate).softmax(-1).reshape(1, Batch * Pos, Experts);   // [1, tokens, experts]
            var routing = Kernels.Kernel.Route(weights, TopK);
            yield return ("moe layer forward", Median(() => moe.forward(x)));
            yield return ("  router + softmax", Median(() => x.matmul(moe.W_gate).softmax(-1)));
            yield return ("  Kernel.Route", Median(() => Kernels.Kernel.Route(weights, TopK)));
            yield return ("  Kernel.ExpertMlp", Median(() => Kernels.Kernel.ExpertMlp(x.reshape(-1, DModel), routing.ExpertIndex.reshape(-1, TopK),
                routing.Gates.reshape(-1, TopK), moe.W_in, moe.b_in, moe.W_out, moe.b_out, h => nn.functional.gelu(h))));
        }

        public void Dispose()
        {
            optimizer.Dispose();
            model.Dispose();
        }
    }
}
