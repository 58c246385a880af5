using MechInterp.Kernels;
using MechInterp.Native;
using MechInterp.Runtime;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MechInterp.Training;

/// <summary>
/// AdamW (Loshchilov and Hutter; PyTorch's update order and defaults) for parameters whose leading dimension
/// indexes independent instances: each instance has its own learning rate, weight decay and gradient-norm clip,
/// so no instance's update depends on another's. An ordinary model is one instance (its parameters have no
/// instance dimension), so a model trained alone and the same model trained inside a batch take the same steps.
/// The arithmetic is a kernel (<see cref="Settings.Kernels"/>, or the backend given here): natively one pass over
/// each parameter per step, managed the same formulas as TorchSharp operations.
/// </summary>
public sealed class InstanceAdamW : IDisposable
{
    private readonly Parameter[] parameters;
    private readonly Tensor[] m, v;    // first and second moments, shaped as the parameters
    private readonly bool batched;
    private readonly double beta1, beta2, eps;
    private readonly KernelBackend? kernels;
    private int step;

    /// <param name="parameters">The parameters to update, each with the instance dimension first in a batched model.</param>
    /// <param name="instances">Instances of a batched model (the leading dimension of every parameter), or null for an ordinary model.</param>
    /// <param name="beta1">Decay of the first moment, in [0, 1).</param>
    /// <param name="beta2">Decay of the second moment, in [0, 1).</param>
    /// <param name="eps">Added to the denominator's square root, finite and non-negative.</param>
    /// <param name="kernels">The backend of the update's arithmetic; null follows <see cref="Settings.Kernels"/> at every step.</param>
    public InstanceAdamW(IEnumerable<Parameter> parameters, int? instances, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8,
                         KernelBackend? kernels = null)
    {
        this.parameters = parameters.ToArray();
        batched = instances is not null;
        Instances = instances ?? 1;
        if (Instances < 1) throw new ArgumentOutOfRangeException(nameof(instances), instances, $"instances must be positive, got {instances}");
        foreach (var p in this.parameters)
            if (batched && (p.dim() == 0 || p.shape[0] != Instances))
                throw new ArgumentException($"a parameter of shape [{string.Join(", ", p.shape)}] has no leading instance dimension of {Instances}", nameof(parameters));
        if (!(beta1 >= 0 && beta1 < 1)) throw new ArgumentOutOfRangeException(nameof(beta1), beta1, $"beta1 must be in [0, 1), got {beta1}");
        if (!(beta2 >= 0 && beta2 < 1)) throw new ArgumentOutOfRangeException(nameof(beta2), beta2, $"beta2 must be in [0, 1), got {beta2}");
        this.beta1 = beta1;
        this.beta2 = beta2;
        if (!(eps >= 0 && double.IsFinite(eps))) throw new ArgumentOutOfRangeException(nameof(eps), eps, $"eps must be finite and non-negative, got {eps}");
        this.eps = eps;
        this.kernels = kernels;
        m = this.parameters.Select(p => zeros_like(p).DetachFromDisposeScope()).ToArray();
        v = this.parameters.Select(p => zeros_like(p).DetachFromDisposeScope()).ToArray();
        LearningRates = Enumerable.Repeat(1e-3, Instances).ToArray();
        WeightDecays = Enumerable.Repeat(0.01, Instances).ToArray();
    }

    public int Instances { get; }

    /// <summary>Learning rate per instance, read at every step (a schedule sets it before each).</summary>
    public double[] LearningRates { get; set; }

    /// <summary>Decoupled weight decay per instance.</summary>
    public double[] WeightDecays { get; set; }

    public void ZeroGrad()
    {
        foreach (var p in parameters) p.grad?.zero_();
    }

    /// <summary>
    /// Scales each instance's gradients so their joint L2 norm is at most maxNorms[i] (0: no clip), as
    /// torch.nn.utils.clip_grad_norm_ does for one model; returns each instance's norm before clipping.
    /// </summary>
    public double[] ClipGradNorms(IReadOnlyList<double> maxNorms)
    {
        Check(maxNorms, nameof(maxNorms));
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var squares = zeros(Instances, dtype: ScalarType.Float64);                                   // [instance]
        double[]? nativeSquares = null;
        foreach (var p in parameters)
        {
            if (p.grad is not { } g) continue;
            if (Native(g)) NativeOptimizer.AddSumSquares(g, Instances, nativeSquares ??= new double[Instances]);
            else squares.add_(View(g).reshape(Instances, -1).to(ScalarType.Float64).pow(2).sum(1));
        }
        if (nativeSquares is not null) squares.add_(tensor(nativeSquares, dtype: ScalarType.Float64));
        var norms = squares.sqrt();                                                                // [instance]
        var limits = tensor(maxNorms.Select(x => x > 0 ? x : double.PositiveInfinity).ToArray(), dtype: ScalarType.Float64);
        var factor = limits.div(norms.add(1e-6)).clamp_max(1.0).to(ScalarType.Float32);            // [instance]
        if (factor.lt(1.0f).any().item<bool>())
        {
            float[]? factors = null;
            foreach (var p in parameters)
            {
                if (p.grad is not { } g) continue;
                if (Native(g)) NativeOptimizer.ScaleRows(g, Instances, factors ??= factor.data<float>().ToArray());
                else View(g).mul_(PerInstance(factor, View(g).dim()));
            }
        }
        return norms.data<double>().ToArray();
    }

    /// <summary>Sets the gradients of the given instances to zero (a diverged instance is frozen this way).</summary>
    public void FreezeGradients(IReadOnlyCollection<int> frozen)
    {
        if (frozen.Count == 0) return;
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var index = tensor(frozen.Select(i => (long)i).ToArray());
        foreach (var p in parameters)
            if (p.grad is { } g)
                View(g).index_fill_(0, index, 0.0);
    }

    /// <summary>One AdamW step of every instance with its own learning rate and weight decay.</summary>
    public void Step()
    {
        Check(LearningRates, nameof(LearningRates));
        Check(WeightDecays, nameof(WeightDecays));
        step++;
        double bias1 = 1 - Math.Pow(beta1, step), bias2 = 1 - Math.Pow(beta2, step);
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        // The per-instance constants in each parameter's own dtype (rounded to float for float32, as the native step does).
        var keepValues = LearningRates.Zip(WeightDecays, (a, w) => 1 - a * w).ToArray();
        var stepValues = LearningRates.Select(x => x / bias1).ToArray();
        var constants = new Dictionary<ScalarType, (Tensor Keep, Tensor StepSize)>();                          // [instance] each
        double sqrtBias2 = Math.Sqrt(bias2);
        for (int j = 0; j < parameters.Length; j++)
        {
            var p = parameters[j];
            if (p.grad is not { } grad) continue;
            if (Native(p) && Native(grad))
            {
                NativeOptimizer.AdamWStep(p, grad, m[j], v[j], Instances, LearningRates, WeightDecays, beta1, beta2, eps, step);
                continue;
            }
            Tensor pv = View(p), g = View(grad), mj = View(m[j]), vj = View(v[j]);
            long rank = pv.dim();
            if (!constants.TryGetValue(p.dtype, out var c))
                constants[p.dtype] = c = (tensor(keepValues, dtype: p.dtype), tensor(stepValues, dtype: p.dtype));
            var (keep, stepSize) = c;
            pv.mul_(PerInstance(keep, rank));
            mj.mul_(beta1).add_(g, alpha: 1 - beta1);
            vj.mul_(beta2).addcmul_(g, g, value: 1 - beta2);
            var denom = vj.sqrt().div_(sqrtBias2).add_(eps);
            pv.sub_(mj.div(denom).mul_(PerInstance(stepSize, rank)));
        }
    }

    /// <summary>
    /// Whether a parameter or gradient goes to the native kernels: as every kernel decides (Auto sends float32 CPU
    /// tensors, Native sends all and the kernel names a wrong dtype), and only a contiguous one (any other layout
    /// takes the managed formulas).
    /// </summary>
    private bool Native(Tensor t)
    {
        TorchRuntime.EnsureLoaded();
        return Kernel.UseNative(kernels, t) && t.is_contiguous();
    }

    /// <summary>A tensor as [instance, ...]: itself for a batched model, with a leading 1 for an ordinary one.</summary>
    private Tensor View(Tensor t) => batched ? t : t.unsqueeze(0);

    private static Tensor PerInstance(Tensor values, long rank) =>
        values.view([values.shape[0], .. Enumerable.Repeat(1L, (int)rank - 1)]);

    private void Check(IReadOnlyList<double> values, string name)
    {
        if (values.Count != Instances) throw new ArgumentException($"{name} has {values.Count} values for {Instances} instances", name);
        for (int i = 0; i < values.Count; i++)
            if (!double.IsFinite(values[i]) || values[i] < 0)
                throw new ArgumentOutOfRangeException(name, values[i], $"{name}[{i}] must be finite and non-negative, got {values[i]}");
    }

    public void Dispose()
    {
        foreach (var t in m.Concat(v)) t.Dispose();
    }
}
