using MechInterp.Native;
using MechInterp.Training;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MechInterp.Tests;

/// <summary>
/// InstanceAdamW is PyTorch's AdamW (TorchSharp's implementation as the reference), per instance, and its native
/// arithmetic equals the managed twin step for step, clipping included.
/// </summary>
public class OptimizerTests
{
    public OptimizerTests() =>
        Assert.True(NativeKernels.IsAvailable, $"the native library must be built for these tests: {NativeKernels.UnavailableReason}");

    /// <summary>Parameters of the given shapes, the same values for the same seed.</summary>
    private static Parameter[] Parameters(int seed, ScalarType dtype, params long[][] shapes)
    {
        manual_seed(seed);
        return shapes.Select(s => new Parameter(randn(s, dtype: dtype))).ToArray();
    }

    /// <summary>Gradients of step s, the same for every copy of the parameters, with a spread of magnitudes.</summary>
    private static void SetGradients(Parameter[] ps, int seed, int s, float scale = 1f)
    {
        manual_seed(1000 * seed + s);
        foreach (var p in ps) p.grad = randn(p.shape, dtype: p.dtype).mul(scale).mul(rand(p.shape, dtype: p.dtype).mul(3).exp());
    }

    private static void AssertClose(Parameter[] expected, Parameter[] actual, double tol, string what)
    {
        for (int j = 0; j < expected.Length; j++)
        {
            double diff = expected[j].sub(actual[j]).abs().max().to(ScalarType.Float64).item<double>();
            Assert.True(diff <= tol, $"{what}: parameter {j} [{string.Join(", ", expected[j].shape)}] differs by {diff:E3} > {tol:E1}");
        }
    }

    private static readonly long[][] Shapes = [[7, 5], [3], [2, 4, 33], [1]];

    [Fact]
    public void AnOrdinaryModelStepsAsTorchSharpsAdamW()
    {
        using var scope = NewDisposeScope();
        var ours = Parameters(3, ScalarType.Float64, Shapes);
        var reference = Parameters(3, ScalarType.Float64, Shapes);
        using var adam = new InstanceAdamW(ours, null, beta1: 0.8, beta2: 0.99) { LearningRates = [0.01], WeightDecays = [0.1] };
        var torchAdam = optim.AdamW(reference, lr: 0.01, beta1: 0.8, beta2: 0.99, eps: 1e-8, weight_decay: 0.1);
        for (int s = 1; s <= 6; s++)
        {
            SetGradients(ours, 3, s);
            SetGradients(reference, 3, s);
            adam.Step();
            torchAdam.step();
        }
        // float64 on both sides: any difference beyond rounding is a different update rule.
        AssertClose(reference, ours, 1e-12, "InstanceAdamW against optim.AdamW");
        Assert.True(ours[0].sub(Parameters(3, ScalarType.Float64, Shapes)[0]).abs().max().item<double>() > 1e-3, "the parameters did not move");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void NativeStepsEqualManagedSteps(bool batched)
    {
        using var scope = NewDisposeScope();
        int instances = batched ? 3 : 1;
        long[][] shapes = batched ? Shapes.Select(s => new[] { 3L }.Concat(s).ToArray()).ToArray() : Shapes;
        var native = Parameters(5, ScalarType.Float32, shapes);
        var managed = Parameters(5, ScalarType.Float32, shapes);
        var start = Parameters(5, ScalarType.Float32, shapes);
        double[] lrs = batched ? [1e-2, 0, 3e-3] : [1e-2], wds = batched ? [0.01, 0.5, 0] : [0.01];
        // Instance 0 clipped hard, 1 not at all (0: no clip), 2 only when its gradients are large.
        double[] clips = batched ? [0.5, 0, 40] : [0.5];
        using var nativeAdam = new InstanceAdamW(native, batched ? instances : null, kernels: KernelBackend.Native) { LearningRates = lrs, WeightDecays = wds };
        using var managedAdam = new InstanceAdamW(managed, batched ? instances : null, kernels: KernelBackend.Managed) { LearningRates = lrs, WeightDecays = wds };
        for (int s = 1; s <= 8; s++)
        {
            float scale = s % 2 == 0 ? 10f : 0.1f;
            SetGradients(native, 5, s, scale);
            SetGradients(managed, 5, s, scale);
            var nativeNorms = nativeAdam.ClipGradNorms(clips);
            var managedNorms = managedAdam.ClipGradNorms(clips);
            for (int i = 0; i < instances; i++)
                Assert.True(Math.Abs(nativeNorms[i] - managedNorms[i]) <= 1e-12 * managedNorms[i],
                            $"step {s}, instance {i}: norm {nativeNorms[i]:R} native, {managedNorms[i]:R} managed");
            // The clipped gradients themselves: the same factor applied to the same values.
            for (int j = 0; j < native.Length; j++)
                Assert.True(native[j].grad!.eq(managed[j].grad!).all().item<bool>(), $"step {s}: clipped gradient {j} differs");
            nativeAdam.Step();
            managedAdam.Step();
        }
        AssertClose(managed, native, 2e-6, "native against managed after 8 steps");
        if (batched)
            foreach (var (p, p0) in native.Zip(start))
                Assert.True(p[1].eq(p0[1]).all().item<bool>(), "an instance with learning rate 0 moved");
        Assert.True(native[2].sub(start[2]).abs().max().to(ScalarType.Float64).item<double>() > 1e-3, "the parameters did not move");
    }

    [Fact]
    public void ClippingBoundsTheNormAndReportsTheNormBeforeIt()
    {
        using var scope = NewDisposeScope();
        var ps = Parameters(9, ScalarType.Float32, Shapes);
        using var adam = new InstanceAdamW(ps, null, kernels: KernelBackend.Native);
        SetGradients(ps, 9, 1, 5f);
        double expected = Math.Sqrt(ps.Sum(p => p.grad!.to(ScalarType.Float64).pow(2).sum().item<double>()));
        var norms = adam.ClipGradNorms([1.0]);
        Assert.True(Math.Abs(norms[0] - expected) <= 1e-9 * expected, $"reported norm {norms[0]}, expected {expected}");
        double after = Math.Sqrt(ps.Sum(p => p.grad!.to(ScalarType.Float64).pow(2).sum().item<double>()));
        Assert.InRange(after, 0.999, 1.0);
    }

    [Fact]
    public void NativeKernelsRefuseFloat64ParametersByName()
    {
        using var scope = NewDisposeScope();
        var ps = Parameters(1, ScalarType.Float64, Shapes);
        SetGradients(ps, 1, 1);
        using var adam = new InstanceAdamW(ps, null, kernels: KernelBackend.Native);
        var error = Assert.Throws<ArgumentException>(() => adam.Step());
        Assert.Contains("float32", error.Message);
        Assert.Contains("Float64", error.Message);
        // Under Auto the same parameters take the managed twin.
        using var auto = new InstanceAdamW(ps, null, kernels: KernelBackend.Auto);
        auto.Step();
    }
}
