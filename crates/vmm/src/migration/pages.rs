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

    /// Adds a memory region's bitmap (KVM's layout, `pages` long) whose
    /// page 0 is this set's page `first` (pages past the end are dropped).
    pub fn add_region(&mut self, first: u64, words: Vec<u64>, pages: u64) {
        let region = PageSet::from_words(words, pages);
        if first.is_multiple_of(64) {
            // Word for word (every region of a hull VM starts so).
            let at = (first / 64) as usize;
            for (mine, theirs) in self.words.iter_mut().skip(at).zip(&region.words) {
                *mine |= theirs;
            }
            self.clear_tail();
            return;
        }
        for (start, count) in region.runs() {
            for page in start..start + count {
                self.insert(first + page);
            }
        }
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

    #[test]
    fn regions_bitmaps_land_at_their_first_page() {
        let mut set = PageSet::empty(300);
        set.add_region(128, vec![0b1011], 4);
        set.add_region(0, vec![1 << 63, u64::MAX], 70);
        set.add_region(250, vec![0b11, 1], 65);
        assert_eq!(set.runs(), vec![(63, 7), (128, 2), (131, 1), (250, 2)]);
        set.add_region(298, vec![u64::MAX], 64);
        assert_eq!(set.count(), 14, "pages past the end are dropped");
    }
}
