/// The log-rank test on censored steps to learned, and the Welch interval of a difference of means.
module MechInterp.Analysis.Tests.SurvivalTests

open Xunit
open MechInterp.Analysis.Statistics
open MechInterp.Analysis.Statistics.Survival

[<Fact>]
let ``the log-rank statistic matches a hand computation`` () =
    // a: events at 1 and 3; b: an event at 2, censored at 4. At t = 1: 4 at risk (2 in b), 1 event (in a);
    // t = 2: 3 at risk (2 in b), 1 event in b; t = 3: 2 at risk (1 in b), 1 event in a.
    // U = (0 − 2/4) + (1 − 2/3) + (0 − 1/2) = −2/3; V = 1/4 + 2/9 + 1/4 = 13/18.
    let r = logRank [ observed 1.0; observed 3.0 ] [ observed 2.0; censored 4.0 ]
    Assert.Equal(-2.0 / 3.0, r.ObservedMinusExpected, 12)
    Assert.Equal((4.0 / 9.0) / (13.0 / 18.0), r.ChiSquare, 12)
    Assert.Equal(6, r.Permutations)                                  // C(4, 2)

[<Fact>]
let ``runs that never learn against runs that all learn give the smallest p, and no events give p = 1`` () =
    let learned = [ for s in [ 600; 600; 700; 700; 650 ] -> observed (float s) ]
    let never = List.replicate 5 (censored 1200.0)
    let r = logRank learned never
    Assert.Equal(252, r.Permutations)
    // The observed split and its mirror are the two most extreme of C(10, 5) = 252 relabellings.
    Assert.Equal(2.0 / 252.0, r.PValue, 12)
    Assert.True(r.ObservedMinusExpected < 0.0, "the censored group has fewer events than expected")
    let none = logRank never never
    Assert.Equal(0.0, none.ChiSquare)
    Assert.Equal(1.0, none.PValue)
    // The same times in both groups are no evidence either way.
    Assert.True((logRank learned learned).PValue > 0.5)

[<Fact>]
let ``past the exact limit the sampled relabellings include the observed one, so p is never 0`` () =
    // 20 against 14 runs: C(34, 14) = 1.4e9 relabellings, so 100,000 are sampled; the observed split (b: the 14 that
    // never learned) is the only one as extreme, and it is counted whether or not the sample draws it.
    let learned = [ for i in 0 .. 19 -> observed (float (500 + 10 * i)) ]
    let never = List.replicate 14 (censored 1200.0)
    let r = logRank learned never
    Assert.Equal(100_001, r.Permutations)
    Assert.Equal(1.0 / 100_001.0, r.PValue, 12)

[<Fact>]
let ``the difference of means has the Welch interval`` () =
    let d, (lo, hi) = Intervals.differenceCi95 [ 1.0; 2.0; 3.0 ] [ 4.0; 5.0; 6.0 ]
    // equal variances 1, n = 3 each: se = sqrt(2/3), Welch df = 4, t = 2.776
    Assert.Equal(3.0, d, 12)
    Assert.Equal(3.0 - 2.776 * sqrt (2.0 / 3.0), lo, 9)
    Assert.Equal(3.0 + 2.776 * sqrt (2.0 / 3.0), hi, 9)
