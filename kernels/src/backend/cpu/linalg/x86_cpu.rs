//! Which x86-64 CPU this is, where a kernel's best choice depends on more than its instruction
//! set (how the cores' prefetchers follow a read pattern; docs/BENCHMARKS.md).

use std::arch::x86_64::__cpuid;

/// The CPU's vendor, family and model (CPUID leaf 1, with the extended fields folded in as
/// the vendors' manuals define them).
#[derive(Clone, Copy, Debug)]
pub(super) struct Cpu {
    pub(super) amd: bool,
    pub(super) family: u32,
    pub(super) model: u32,
}

impl Cpu {
    pub(super) fn this() -> Cpu {
        let vendor = __cpuid(0);
        // "AuthenticAMD", as EBX, EDX, ECX hold it.
        let amd = [vendor.ebx, vendor.edx, vendor.ecx] == [0x6874_7541, 0x6974_6e65, 0x444d_4163];
        let eax = __cpuid(1).eax;
        let base_family = (eax >> 8) & 0xf;
        let family = if base_family == 0xf {
            base_family + ((eax >> 20) & 0xff)
        } else {
            base_family
        };
        let model = if base_family == 0x6 || base_family == 0xf {
            (((eax >> 16) & 0xf) << 4) | ((eax >> 4) & 0xf)
        } else {
            (eax >> 4) & 0xf
        };
        Cpu { amd, family, model }
    }

    /// An AMD core of the Zen 4 generation or later: family 0x19 models 0x10–0x1f (Genoa),
    /// 0x60–0x7f (Raphael, Phoenix) and 0xa0–0xaf (Bergamo, Siena), and every later family
    /// (Zen 5 is 0x1a). Family 0x19's other models are Zen 3.
    pub(super) fn amd_zen4_or_later(self) -> bool {
        self.amd
            && (self.family > 0x19
                || (self.family == 0x19
                    && matches!(self.model, 0x10..=0x1f | 0x60..=0x7f | 0xa0..=0xaf)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zen_generations_by_family_and_model() {
        let amd = |family, model| Cpu {
            amd: true,
            family,
            model,
        };
        // Zen 3: Milan, Vermeer, Cezanne; Zen 4: Genoa, Raphael, Phoenix, Bergamo; Zen 5.
        for (family, model, zen4) in [
            (0x19, 0x01, false),
            (0x19, 0x21, false),
            (0x19, 0x50, false),
            (0x19, 0x11, true),
            (0x19, 0x61, true),
            (0x19, 0x74, true),
            (0x19, 0xa0, true),
            (0x1a, 0x02, true),
            (0x17, 0x31, false),
        ] {
            assert_eq!(
                amd(family, model).amd_zen4_or_later(),
                zen4,
                "{family:#x}/{model:#x}"
            );
        }
        let intel = Cpu {
            amd: false,
            family: 6,
            model: 0x6a,
        };
        assert!(!intel.amd_zen4_or_later());
        // This machine's identity is well formed, whatever it is.
        let cpu = Cpu::this();
        assert!(cpu.family >= 6, "{cpu:?}");
    }
}
