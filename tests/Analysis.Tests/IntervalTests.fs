module MechInterp.Analysis.Tests.IntervalTests

open System
open Xunit
open FsCheck
open FsCheck.Xunit
open MechInterp.Analysis.Statistics.Intervals

[<Fact>]
let ``known sample gives the textbook interval`` () =
    // 1..5: mean 3, sd sqrt(2.5), t(4) = 2.776 -> half width 1.963
    let s = summarize [ 1.0; 2.0; 3.0; 4.0; 5.0 ]
    Assert.Equal(3.0, s.Mean, 12)
    Assert.Equal(sqrt 2.5, s.StdDev, 12)
    let lo, hi = s.Ci95
    Assert.Equal(3.0 - 2.776 * sqrt 2.5 / sqrt 5.0, lo, 9)
    Assert.Equal(3.0 + 2.776 * sqrt 2.5 / sqrt 5.0, hi, 9)

[<Fact>]
let ``bad samples are rejected by name`` () =
    Assert.Contains("empty", (Assert.Throws<ArgumentException>(fun () -> summarize [] |> ignore)).Message)
    Assert.Contains("NaN", (Assert.Throws<ArgumentException>(fun () -> summarize [ 1.0; nan ] |> ignore)).Message)

[<Property>]
let ``the interval contains the mean and is symmetric around it`` (xs: NormalFloat list) =
    let xs = xs |> List.map (fun x -> float x % 1e6)
    xs.Length = 0
    || (let s = summarize xs
        let lo, hi = s.Ci95
        lo <= s.Mean && s.Mean <= hi && abs ((s.Mean - lo) - (hi - s.Mean)) <= 1e-6 * (1.0 + abs s.Mean))
