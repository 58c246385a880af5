using System.Diagnostics;

namespace MechInterp.Training;

/// <summary>
/// A progress bar (step, loss, tokens/s, ETA) on a terminal; on redirected output, about twenty
/// plain log lines per run instead, so CI logs stay readable.
/// </summary>
internal sealed class Progress(int total, bool enabled)
{
    private readonly bool terminal = !Console.IsOutputRedirected;
    private readonly Stopwatch clock = Stopwatch.StartNew();
    private readonly int every = Math.Max(1, total / 20);
    private long lastDraw;

    /// <param name="converged">With a convergence criterion: how many instances have converged.</param>
    public void Report(int step, double loss, double tokensPerSecond, int? converged = null)
    {
        if (!enabled) return;
        double elapsed = clock.Elapsed.TotalSeconds;
        var eta = TimeSpan.FromSeconds(elapsed / step * (total - step));
        string text = $"step {step,6}/{total}  loss {loss,8:F4}  {tokensPerSecond,9:F0} tok/s  ETA {eta:mm\\:ss}"
                      + (converged is int c ? $"  converged {c}" : "");
        if (terminal)
        {
            if (clock.ElapsedMilliseconds - lastDraw < 100 && step != total) return;
            lastDraw = clock.ElapsedMilliseconds;
            int width = 24, filled = (int)((long)width * step / total);
            Console.Write($"\r[{new string('#', filled)}{new string('.', width - filled)}] {text}");
        }
        else if (step % every == 0 || step == total)
            Console.WriteLine(text);
    }

    public void Done()
    {
        if (enabled && terminal) Console.WriteLine();
    }
}
