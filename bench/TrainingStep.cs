using MechInterp.Kernels;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MechInterp.Bench;

/// <summary>
/// One training step (forward, backward, AdamW) of a 2-layer d128 MoE decoder whose attention and
/// experts call <see cref="Kernel.Attention"/> and <see cref="Kernel.ExpertMlp"/>, run with native
/// and with managed kernels. Built here from plain TorchSharp modules: the HookedTransformer is not
/// on this branch yet.
/// </summary>
internal static class TrainingStep
{
    private const int Vocab = 512, DModel = 128, Heads = 4, DMlp = 512, Experts = 8, TopK = 2, Layers = 2, Batch = 8, Pos = 128;

    public static IEnumerable<BenchResult> Run()
    {
        using var scope = NewDisposeScope();
        manual_seed(5);
        var tokens = randint(0, Vocab, new long[] { Batch, Pos + 1 }, dtype: ScalarType.Int64);   // [batch, pos + 1]
        var input = tokens.narrow(1, 0, Pos);     // [batch, pos]
        var target = tokens.narrow(1, 1, Pos);    // [batch, pos]
        double Step(KernelBackend backend)
        {
            manual_seed(6);
            var model = new TinyMoeDecoder(backend);
            var optimizer = optim.AdamW(model.parameters(), lr: 1e-3);
            return Timing.MedianMs(() => AttentionCases.Step(() =>
            {
                optimizer.zero_grad();
                var logits = model.forward(input);                                  // [batch, pos, vocab]
                var loss = nn.functional.cross_entropy(logits.reshape(-1, Vocab), target.reshape(-1));
                loss.backward();
                optimizer.step();
                return loss;
            }), warmup: 2, repetitions: 11);
        }
        double ours = Step(KernelBackend.Native);
        double managed = Step(KernelBackend.Managed);
        yield return new BenchResult($"train step 2L d{DModel} MoE E{Experts} top{TopK} B{Batch} T{Pos}", ours, "managed", managed);
    }

    private sealed class Block : nn.Module<Tensor, Tensor>
    {
        private readonly LayerNorm ln1 = nn.LayerNorm(DModel), ln2 = nn.LayerNorm(DModel);
        private readonly Linear qkv = nn.Linear(DModel, 3 * DModel), proj = nn.Linear(DModel, DModel), router = nn.Linear(DModel, Experts);
        private readonly Parameter wIn, bIn, wOut, bOut;
        private readonly KernelBackend backend;

        public Block(KernelBackend backend) : base("block")
        {
            this.backend = backend;
            wIn = nn.Parameter(randn(Experts, DModel, DMlp).div(Math.Sqrt(DModel)));
            bIn = nn.Parameter(zeros(Experts, DMlp));
            wOut = nn.Parameter(randn(Experts, DMlp, DModel).div(Math.Sqrt(DMlp)));
            bOut = nn.Parameter(zeros(Experts, DModel));
            RegisterComponents();
        }

        public override Tensor forward(Tensor x)
        {
            long b = x.shape[0], t = x.shape[1];
            var qkvHeads = qkv.forward(ln1.forward(x)).view(b, t, 3, Heads, DModel / Heads).permute(2, 0, 3, 1, 4);   // [3, b, h, t, d_head]
            var z = Kernel.Attention(qkvHeads[0], qkvHeads[1], qkvHeads[2], causal: true, backend: backend).Z;        // [b, h, t, d_head]
            x = x.add(proj.forward(z.transpose(1, 2).reshape(b, t, DModel)));                                          // [b, t, d]
            var flat = ln2.forward(x).reshape(b * t, DModel);                                                          // [b*t, d]
            var route = Kernel.RouteTopK(router.forward(flat), TopK, backend: backend);
            var y = Kernel.ExpertMlp(flat, route.ExpertIndex, route.Gates, wIn, bIn, wOut, bOut, h => nn.functional.gelu(h), backend);
            return x.add(y.view(b, t, DModel));
        }
    }

    private sealed class TinyMoeDecoder : nn.Module<Tensor, Tensor>
    {
        private readonly Embedding embed = nn.Embedding(Vocab, DModel);
        private readonly Parameter pos = nn.Parameter(randn(Pos, DModel).mul(0.02));
        private readonly ModuleList<Block> blocks = new();
        private readonly LayerNorm lnFinal = nn.LayerNorm(DModel);
        private readonly Linear unembed = nn.Linear(DModel, Vocab);

        public TinyMoeDecoder(KernelBackend backend) : base("tiny_moe")
        {
            for (int i = 0; i < Layers; i++) blocks.Add(new Block(backend));
            RegisterComponents();
        }

        public override Tensor forward(Tensor tokens)
        {
            var x = embed.forward(tokens).add(pos);   // [b, t, d]
            foreach (var block in blocks) x = block.forward(x);
            return unembed.forward(lnFinal.forward(x));
        }
    }
}
