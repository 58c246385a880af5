using static TorchSharp.torch;

namespace MechInterp.Bench;

/// <summary>
/// The machine's GEMM peak for this run: a large square libtorch matmul on the current threads. Timed in the same
/// round-robin as a kernel, it turns the kernel's FLOP rate into a share of the peak that the machine's load
/// changes hit on both sides.
/// </summary>
internal sealed class GemmPeak : IDisposable
{
    private const long N = 1536;
    private readonly Tensor a = randn(N, N), b = randn(N, N);   // [N, N] each

    public static double Flops => 2.0 * N * N * N;

    /// <summary>One timed repetition: the product is freed at once.</summary>
    public void Step()
    {
        using var _ = a.matmul(b);
    }

    public static double Gflops(double ms) => Flops / (ms * 1e6);

    /// <summary>The peak on its own, for rows that time nothing beside it.</summary>
    public static double Measure()
    {
        using var peak = new GemmPeak();
        return Gflops(Timing.MedianMs(peak.Step, warmup: 3, repetitions: 9));
    }

    public void Dispose()
    {
        a.Dispose();
        b.Dispose();
    }
}
