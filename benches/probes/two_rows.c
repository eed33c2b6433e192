/* Standalone probe, not part of the build.
 * Two rows of x over the f16 `Panels` layout: one row alone, the panel in two halves end to
 * end (with and without prefetch of the second half), and the two rows one after the other
 * (docs/BENCHMARKS.md, Zen 4). -DK=2816 for the down projection's rows.
 *
 *     gcc -O3 -march=znver3 benches/probes/two_rows.c -o /tmp/two_rows && /tmp/two_rows
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#ifndef K
#define K 1024
#endif
static float XB[4*K+1024] __attribute__((aligned(4096)));
volatile float sink;
// 2 rows of x (x0, x1) vs panels16, two half passes of 4 rows
static float m2(const uint16_t*w,size_t np,const float*x0,const float*x1){float tot=0;
 for(size_t q=0;q<np;q++){const uint16_t*p=w+q*8*K;
  for(int h=0;h<2;h++){__m256 a[2][4];for(int i=0;i<2;i++)for(int j=0;j<4;j++)a[i][j]=_mm256_setzero_ps();
   const uint16_t*pp=p+h*4*16;
   for(int c=0;c<K;c+=16){const uint16_t*ch=pp+c*8;
    for(int hh=0;hh<2;hh++){__m256 xa=_mm256_loadu_ps(x0+c+hh*8),xb=_mm256_loadu_ps(x1+c+hh*8);
     for(int j=0;j<4;j++){__m256 wv=_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(ch+j*16+hh*8)));a[0][j]=_mm256_fmadd_ps(xa,wv,a[0][j]);a[1][j]=_mm256_fmadd_ps(xb,wv,a[1][j]);}}}
   for(int j=1;j<4;j++){a[0][0]=_mm256_add_ps(a[0][0],a[0][j]);a[1][0]=_mm256_add_ps(a[1][0],a[1][j]);}
   float o[8];_mm256_storeu_ps(o,_mm256_add_ps(a[0][0],a[1][0]));tot+=o[0];}}
 return tot;}
static float r1(const uint16_t*p,const float*x){__m256 acc[8];for(int j=0;j<8;j++)acc[j]=_mm256_setzero_ps();
  for(int c=0;c<K;c+=16){const uint16_t*ch=p+c*8;__m256 x0=_mm256_loadu_ps(x+c),x1=_mm256_loadu_ps(x+c+8);
   for(int j=0;j<8;j++)acc[j]=_mm256_fmadd_ps(x0,_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(ch+j*16))),acc[j]);
   for(int j=0;j<8;j++)acc[j]=_mm256_fmadd_ps(x1,_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(ch+j*16+8))),acc[j]);}
  for(int j=1;j<8;j++)acc[0]=_mm256_add_ps(acc[0],acc[j]);float o[8];_mm256_storeu_ps(o,acc[0]);return o[0];}
static float rowwise(const uint16_t*w,size_t np,const float*x0,const float*x1){float t=0;for(size_t q=0;q<np;q++){const uint16_t*p=w+q*8*K;t+=r1(p,x0);t+=r1(p,x1);}return t;}
static float one(const uint16_t*w,size_t np,const float*x0){float t=0;for(size_t q=0;q<np;q++){t+=r1(w+q*8*K,x0);}return t;}
static float m2pf(const uint16_t*w,size_t np,const float*x0,const float*x1){float tot=0;
 for(size_t q=0;q<np;q++){const uint16_t*p=w+q*8*K;
  for(int h=0;h<2;h++){__m256 a[2][4];for(int i=0;i<2;i++)for(int j=0;j<4;j++)a[i][j]=_mm256_setzero_ps();
   const uint16_t*pp=p+h*4*16;
   for(int c=0;c<K;c+=16){const uint16_t*ch=pp+c*8; if(h==0){_mm_prefetch((const char*)(ch+64),_MM_HINT_T0);_mm_prefetch((const char*)(ch+96),_MM_HINT_T0);}
    for(int hh=0;hh<2;hh++){__m256 xa=_mm256_loadu_ps(x0+c+hh*8),xb=_mm256_loadu_ps(x1+c+hh*8);
     for(int j=0;j<4;j++){__m256 wv=_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(ch+j*16+hh*8)));a[0][j]=_mm256_fmadd_ps(xa,wv,a[0][j]);a[1][j]=_mm256_fmadd_ps(xb,wv,a[1][j]);}}}
   for(int j=1;j<4;j++){a[0][0]=_mm256_add_ps(a[0][0],a[0][j]);a[1][0]=_mm256_add_ps(a[1][0],a[1][j]);}
   float o[8];_mm256_storeu_ps(o,_mm256_add_ps(a[0][0],a[1][0]));tot+=o[0];}}
 return tot;}
int main(){size_t bytes=(size_t)512<<20;char*buf=mmap(0,bytes,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);madvise(buf,bytes,MADV_HUGEPAGE);
 for(size_t i=0;i<bytes;i+=8)*(uint64_t*)(buf+i)=0x3c003c003c003c00ull;for(int i=0;i<4*K+1024;i++)XB[i]=1.0f/(i+1);
 size_t np=bytes/2/(8*K);const char*nm[]={"1 row","2 rows, half passes","2 rows, half passes + pf","2 rows, row by row"};double best[4]={0};
 for(int it=0;it<4;it++)for(int c=0;c<4;c++){double t0=now();const uint16_t*w=(uint16_t*)buf;const float*a=XB,*b=XB+K+16;
  sink+= c==0?one(w,np,a): c==1?m2(w,np,a,b): c==2?m2pf(w,np,a,b): rowwise(w,np,a,b);double g=bytes/(now()-t0)/1e9;if(g>best[c])best[c]=g;}
 for(int c=0;c<4;c++)printf("%s: %.1f GB/s\n",nm[c],best[c]);}
