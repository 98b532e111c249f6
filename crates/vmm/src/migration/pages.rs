//! Sets of guest pages: what a round sends, what the guest dirtied.

/// A set of guest page numbers, one bit each, in KVM's dirty-log layout
/// (page `64 * w + b` is bit `b` of word `w`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageSet {
    words: Vec<u64>,
    pages: u64,
}

impl PageSet {
    pub fn empty(pages: u64) -> PageSet {
        PageSet {
            words: vec![0; pages.div_ceil(64) as usize],
            pages,
        }
    }

    pub fn full(pages: u64) -> PageSet {
        let mut set = PageSet {
            words: vec![u64::MAX; pages.div_ceil(64) as usize],
            pages,
        };
        set.clear_tail();
        set
    }

    /// A set from a bitmap as KVM returns it; bits past `pages` are dropped
    /// and missing words are empty.
    pub fn from_words(mut words: Vec<u64>, pages: u64) -> PageSet {
        words.resize(pages.div_ceil(64) as usize, 0);
        let mut set = PageSet { words, pages };
        set.clear_tail();
        set
    }

    fn clear_tail(&mut self) {
        let used = self.pages % 64;
        if used != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << used) - 1;
            }
        }
    }

    /// How many pages the set can hold (the guest's).
    pub fn pages(&self) -> u64 {
        self.pages
    }

    pub fn insert(&mut self, page: u64) {
        if page < self.pages {
            self.words[(page / 64) as usize] |= 1 << (page % 64);
        }
    }

    pub fn contains(&self, page: u64) -> bool {
        page < self.pages && self.words[(page / 64) as usize] & (1 << (page % 64)) != 0
    }

    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Adds every page of `other` (sets of other sizes add what fits).
    pub fn add(&mut self, other: &PageSet) {
        for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
            *mine |= theirs;
        }
        self.clear_tail();
    }

    /// The set's pages in order, as runs `(first, count)` of consecutive pages.
    pub fn runs(&self) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (w, &word) in self.words.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let page = w as u64 * 64 + u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                match runs.last_mut() {
                    Some((first, count)) if *first + *count == page => *count += 1,
                    _ => runs.push((page, 1)),
                }
            }
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_hold_pages_and_list_them_as_runs() {
        let mut set = PageSet::empty(200);
        for page in [0, 1, 2, 63, 64, 65, 130, 199, 200, 5000] {
            set.insert(page);
        }
        assert_eq!(set.count(), 8, "pages past the end are not held");
        assert!(set.contains(64) && !set.contains(3) && !set.contains(200));
        assert_eq!(set.runs(), vec![(0, 3), (63, 3), (130, 1), (199, 1)]);
        assert_eq!(PageSet::full(130).count(), 130);
        assert_eq!(PageSet::full(130).runs(), vec![(0, 130)]);
        assert!(PageSet::empty(10).is_empty());
    }

    #[test]
    fn kvm_bitmaps_are_cut_to_the_guest() {
        let set = PageSet::from_words(vec![u64::MAX, u64::MAX, u64::MAX], 70);
        assert_eq!(set.count(), 70);
        let short = PageSet::from_words(vec![0b101], 200);
        assert_eq!(short.runs(), vec![(0, 1), (2, 1)]);
        let mut union = PageSet::empty(70);
        union.add(&PageSet::full(200));
        assert_eq!(union, PageSet::full(70));
    }
}
