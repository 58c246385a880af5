using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MechInterp.ToyModels;

/// <summary>
/// A mixture-of-experts toy model of superposition: x' = ReLU(g · W_eᵀ W_e x + b), where a linear
/// router picks one expert e per sample (top-1, gate g its softmax probability) and each expert is
/// its own embedding W_e [m, n]. With one expert the gate is fixed at 1 and it is Elhage et al.'s
/// dense <see cref="ToyModel"/>; the comparison trains that one as the dense baseline of width m · E.
/// </summary>
public sealed class ExpertToyModel : nn.Module<Tensor, Tensor>
{
    public int Features { get; }
    public int Hidden { get; }
    public int Experts { get; }

    /// <summary>Expert embeddings, [experts, m, n]: column i of expert e is feature i's direction in that expert.</summary>
    public Parameter W;
    /// <summary>Router, [n, experts].</summary>
    public Parameter W_router;
    /// <summary>Output bias, [n].</summary>
    public Parameter b;

    /// <summary>Switch load-balancing loss E·Σ f_e·P_e of the last forward pass (unscaled); 0 for one expert.</summary>
    public Tensor? LastBalanceLoss { get; private set; }

    public ExpertToyModel(int features, int hidden, int experts, long seed) : base("expert_toy_model")
    {
        if (features < 1) throw new ArgumentException($"feature count n must be at least 1, got {features}");
        if (hidden < 1) throw new ArgumentException($"hidden dimension m must be at least 1, got {hidden}");
        if (experts < 1) throw new ArgumentException($"expert count must be at least 1, got {experts}");
        Features = features; Hidden = hidden; Experts = experts;
        using var generator = new Generator((ulong)seed);
        double std = Math.Sqrt(2.0 / (features + hidden));
        W = new Parameter(randn([experts, hidden, features], generator: generator).mul_(std));
        W_router = new Parameter(randn([features, experts], generator: generator).mul_(0.1));
        b = new Parameter(zeros(features));
        RegisterComponents();
    }

    /// <summary>The top expert of each sample: x [batch, n] → [batch] int64.</summary>
    public Tensor Route(Tensor x) => x.matmul(W_router).argmax(-1);

    /// <summary>x [batch, n] → x' [batch, n]</summary>
    public override Tensor forward(Tensor x)
    {
        if (Experts == 1)
        {
            LastBalanceLoss = zeros(1).squeeze();
            return x.matmul(W[0].t()).matmul(W[0]).add(b).relu();                   // dense: WᵀWx + b
        }
        var probs = x.matmul(W_router).softmax(-1);                                  // [batch, E]
        var (gate, expert) = probs.max(-1);                                           // [batch] each
        var hidden = x.unsqueeze(0).matmul(W.transpose(1, 2));                        // [E, batch, m]
        var all = hidden.matmul(W);                                                   // [E, batch, n]
        var chosen = all.permute(1, 0, 2).gather(1, expert.view(-1, 1, 1).expand(-1, 1, Features)).squeeze(1);   // [batch, n]
        var fraction = nn.functional.one_hot(expert, Experts).to(probs.dtype).mean([0L]);   // [E]
        LastBalanceLoss = fraction.mul(probs.mean([0L])).sum().mul(Experts);
        return chosen.mul(gate.unsqueeze(1)).add(b).relu();
    }

    /// <summary>Expert e's embedding as rows [m][n], detached.</summary>
    public double[][] EmbeddingOf(int expert)
    {
        if (expert < 0 || expert >= Experts)
            throw new ArgumentOutOfRangeException(nameof(expert), expert, $"expert {expert} is outside [0, {Experts})");
        using var scope = NewDisposeScope();
        var flat = W[expert].detach().to(float64).data<double>().ToArray();
        return Enumerable.Range(0, Hidden).Select(r => flat.AsSpan(r * Features, Features).ToArray()).ToArray();
    }

    /// <summary>
    /// Trains on <see cref="SyntheticFeatures"/> (each feature 0 with probability <paramref name="sparsity"/>,
    /// else uniform on [0, 1]) with importance-weighted squared error plus α·balance loss. AdamW, each step
    /// in a dispose scope. Returns the mean reconstruction loss over the last tenth of the steps.
    /// </summary>
    public double Train(double[] importance, double sparsity, int steps, int batch, double learningRate, double balanceCoef, long seed)
    {
        if (importance.Length != Features) throw new ArgumentException($"{importance.Length} importance weights for n = {Features} features");
        if (!(sparsity >= 0 && sparsity < 1)) throw new ArgumentException($"sparsity must be in [0, 1), got {sparsity}");
        using var data = new SyntheticFeatures(Features, [sparsity], seed);
        using var weights = tensor(importance.Select(w => (float)w).ToArray());        // [n]
        using var optimizer = optim.AdamW(parameters(), learningRate, weight_decay: 0.0);
        int window = Math.Max(1, steps / 10);
        double tail = 0;
        for (int step = 0; step < steps; step++)
        {
            using var scope = NewDisposeScope();
            var x = data.Sample(batch).squeeze(0);                                    // [batch, n]
            var reconstruction = forward(x);
            var loss = reconstruction.sub(x).pow(2).mul(weights).sum(1).mean();
            optimizer.zero_grad();
            loss.add(LastBalanceLoss!.mul(balanceCoef)).backward();
            optimizer.step();
            if (step >= steps - window) tail += loss.item<float>();
        }
        return tail / window;
    }
}
