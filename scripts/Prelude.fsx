// Loaded by every script: references the built assemblies and makes libtorch loadable.
// Build first with `dotnet fsi build.fsx build` (the main job does it too).
#r "nuget: TorchSharp-cpu, 0.107.0"
#r "../src/Analysis.FSharp/bin/Release/net10.0/linux-x64/MechInterp.Core.dll"
#r "nuget: Plotly.NET, 6.0.0"
#r "nuget: ScottPlot, 5.1.59"
#r "../src/Analysis.FSharp/bin/Release/net10.0/linux-x64/MechInterp.Analysis.dll"

MechInterp.Runtime.TorchRuntime.EnsureLoaded()
