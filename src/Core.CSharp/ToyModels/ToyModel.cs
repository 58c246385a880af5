using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MechInterp.ToyModels;

/// <summary>
/// Elhage et al. (2022)'s toy model, many instances at once: x' = act(WᵀWx + b), W [m, n] per instance.
/// Instances share nothing but the tensors they live in, so a sweep over sparsity costs one training run.
/// </summary>
public sealed class ToyModel : nn.Module<Tensor, Tensor>
{
    /// <summary>The shape and activation this model was built with.</summary>
    public ToyModelConfig Config { get; }

    /// <summary>Embedding, [instances, m, n]: column i of instance k is feature i's direction W_i.</summary>
    public Parameter W { get; }

    /// <summary>Output bias, [instances, n].</summary>
    public Parameter B { get; }

    /// <summary>
    /// Xavier-normal W and zero b, as the paper's code. Each instance gets the spread a single [n, m]
    /// model would (std = sqrt(2 / (n + m))), so an instance's start does not depend on how many train beside it.
    /// </summary>
    public ToyModel(ToyModelConfig config, long seed) : base("toy_model")
    {
        config.Validate();
        Config = config;
        using var generator = new Generator((ulong)seed);
        double std = Math.Sqrt(2.0 / (config.Features + config.Hidden));
        using (no_grad())
        {
            W = new Parameter(randn([config.Instances, config.Hidden, config.Features], generator: generator).mul_(std));
            B = new Parameter(zeros(config.Instances, config.Features));
        }
        RegisterComponents();
    }

    /// <summary>A model starting from given weights (copied): W [instances, m, n], b [instances, n].</summary>
    public ToyModel(Tensor w, Tensor b, ToyActivation activation) : base("toy_model")
    {
        if (w.dim() != 3)
            throw new ArgumentException($"W must be [instances, m, n], got shape [{string.Join(", ", w.shape)}].");
        Config = new ToyModelConfig((int)w.shape[2], (int)w.shape[1], (int)w.shape[0], activation);
        Config.Validate();
        if (b.dim() != 2 || b.shape[0] != w.shape[0] || b.shape[1] != w.shape[2])
            throw new ArgumentException(
                $"b must be [instances, n] = [{w.shape[0]}, {w.shape[2]}], got [{string.Join(", ", b.shape)}].");
        W = new Parameter(w.detach().clone().to(float32));
        B = new Parameter(b.detach().clone().to(float32));
        RegisterComponents();
    }

    /// <summary>x [instances, batch, n] → x' [instances, batch, n].</summary>
    public override Tensor forward(Tensor x)
    {
        using var hidden = x.matmul(W.transpose(1, 2));   // [instances, batch, m]
        var linear = hidden.matmul(W).add_(B.unsqueeze(1)); // [instances, batch, n]
        return Config.Activation == ToyActivation.Relu ? linear.relu_() : linear;
    }

    /// <summary>The trained embedding of one instance as rows of W [m][n], detached, on the CPU.</summary>
    public double[][] EmbeddingOf(int instance)
    {
        if (instance < 0 || instance >= Config.Instances)
            throw new ArgumentOutOfRangeException(nameof(instance), instance,
                $"instance {instance} is outside [0, {Config.Instances}).");
        using var scope = NewDisposeScope();
        var w = W[instance].detach().to(float64).cpu();     // [m, n]
        var flat = w.data<double>().ToArray();
        int m = Config.Hidden, n = Config.Features;
        return Enumerable.Range(0, m).Select(r => flat.AsSpan(r * n, n).ToArray()).ToArray();
    }
}
