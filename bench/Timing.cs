using System.Diagnostics;

namespace MechInterp.Bench;

/// <summary>Warm-up, then the median of repeated timings: the only way speed is measured here.</summary>
internal static class Timing
{
    public static double MedianMs(Action body, int warmup = 3, int repetitions = 15)
    {
        for (int i = 0; i < warmup; i++) body();
        var samples = new double[repetitions];
        for (int i = 0; i < repetitions; i++)
        {
            long start = Stopwatch.GetTimestamp();
            body();
            samples[i] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        }
        Array.Sort(samples);
        return repetitions % 2 == 1 ? samples[repetitions / 2] : (samples[repetitions / 2 - 1] + samples[repetitions / 2]) / 2;
    }
}

/// <summary>One row of bench.json: speedup = baseline_ms / ours_ms.</summary>
internal sealed record BenchResult(string Case, double OursMs, string Baseline, double BaselineMs)
{
    public double Speedup => BaselineMs / OursMs;
}
